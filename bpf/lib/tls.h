/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * HTTPS without a proxy (see bpf/api/tls.h). An OpenSSL call is followed
 * from its entry (the SSL object, the plaintext buffer) to its return (how
 * many bytes moved). Its socket is the first socket a read, write, recv or
 * send system call of the same thread names inside it (a BIO of the
 * program's own may touch a pipe first), remembered per SSL object for
 * calls that make none (a read served from OpenSSL's buffer).
 * SSL_set_fd alone would not do (curl and others hand OpenSSL a BIO of
 * their own), but where a program calls it, it names the socket first.
 * SSL_free forgets the object's socket, so an object freed and its address
 * reused for a new connection never names the old one's. An object a
 * program reuses through SSL_clear keeps its socket until the next call
 * that makes a system call (or SSL_set_fd) names the new one. The
 * socket's addresses are read from the kernel's socket at the
 * return, while the process still holds it: a short-lived client is gone
 * before the agent could look in /proc.
 */
#ifndef WEIR_LIB_TLS_H
#define WEIR_LIB_TLS_H

#include "common.h"
#include "http_head.h"
#include "fd_sock.h"
#include "ring_wakeup.h"

#define TLS_AF_INET 2
#define TLS_AF_INET6 10

/* A thread inside an OpenSSL call. */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 moved; /* the _ex forms: where the byte count is written; 0 otherwise */
	__s32 fd;    /* -1 until a system call on a descriptor is seen */
	__u16 depth; /* calls nested inside this one, left to it */
	__u8 write;
	__u8 pad;
};

struct tls_socket_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

/* A thread killed inside a call never returns from it: its entry goes
 * when the thread exits (tls_thread_exit). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_TLS_CALLS_MAX);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* Entries of tls_calls, kept beside it: the system-call probes run on
 * every read and write of the host, and while no thread is inside an
 * OpenSSL call (most of the time, for most hosts) this one load is all
 * they cost. */
__u64 tls_calls_in_flight = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_TLS_SOCKETS_MAX);
	__type(key, struct tls_socket_key);
	__type(value, __s32);
} tls_sockets SEC(".maps");

/* The agent's scope: only tasks below this cgroup are followed. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tls_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} tls_ring SEC(".maps");

/* The reader polls; it is woken only once this much waits (ring_wakeup.h). */
#define TLS_WAKEUP_BYTES (256 << 10)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_TLS_OUTCOME_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tls_outcomes SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace reads it). */
struct weir_tls_event weir_tls_event_layout = {};

static __always_inline void tls_count(__u32 outcome)
{
	__u64 *n = bpf_map_lookup_elem(&tls_outcomes, &outcome);

	if (n)
		*n += 1;
}

static __always_inline int tls_enter(void *ssl, const void *buf, void *moved, __u8 write)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call call = {}, *outer;

	outer = bpf_map_lookup_elem(&tls_calls, &id);
	if (outer) {
		outer->depth++;
		tls_count(WEIR_TLS_OUTCOME_NESTED);
		return 0;
	}
	if (bpf_current_task_under_cgroup(&tls_scope, 0) != 1)
		return 0;
	call.ssl = (__u64)ssl;
	call.buf = (__u64)buf;
	call.moved = (__u64)moved;
	call.fd = -1;
	call.write = write;
	if (bpf_map_update_elem(&tls_calls, &id, &call, BPF_NOEXIST))
		tls_count(WEIR_TLS_OUTCOME_CALLS_FULL);
	else
		__sync_fetch_and_add(&tls_calls_in_flight, 1);
	return 0;
}

/* The thread `id` is out of its call (returned, or exiting inside it). */
static __always_inline void tls_call_done(__u64 id)
{
	if (!bpf_map_delete_elem(&tls_calls, &id))
		__sync_fetch_and_sub(&tls_calls_in_flight, 1);
}

/* A read/write/recv/send system call: inside an OpenSSL call, the first
 * socket it names is the connection's (a BIO of the program's own may
 * touch a pipe or an eventfd first). */
static __always_inline int tls_syscall(long fd)
{
	__u64 id;
	struct tls_call *call;

	if (!tls_calls_in_flight)
		return 0;
	id = bpf_get_current_pid_tgid();
	call = bpf_map_lookup_elem(&tls_calls, &id);
	if (call && call->fd < 0 && fd >= 0 && fd <= 0x7fffffff && fd_sock(fd))
		call->fd = fd;
	return 0;
}

/* SSL_free: the object's socket is forgotten. */
static __always_inline int tls_forget(void *ssl)
{
	struct tls_socket_key key = { .ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };

	bpf_map_delete_elem(&tls_sockets, &key);
	return 0;
}

/* SSL_set_fd: the object's socket from now on (forgotten when fd is none). */
static __always_inline int tls_set_fd(void *ssl, long fd)
{
	struct tls_socket_key key = { .ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };
	__s32 socket_fd = fd;

	if (bpf_current_task_under_cgroup(&tls_scope, 0) != 1)
		return 0;
	if (fd >= 0 && fd <= 0x7fffffff && fd_sock(fd))
		bpf_map_update_elem(&tls_sockets, &key, &socket_fd, BPF_ANY);
	else
		bpf_map_delete_elem(&tls_sockets, &key);
	return 0;
}

/* The current thread exits: a call it was inside will not return. */
static __always_inline int tls_thread_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	tls_call_done(id);
	return 0;
}

/* Fills the event's addresses from the socket; false if it is no IPv4/IPv6 socket. */
static __always_inline bool tls_addresses(struct weir_tls_event *ev, struct sock *sk)
{
	__u16 family;

	if (!sk)
		return false;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__builtin_memset(ev->local, 0, sizeof(ev->local));
	__builtin_memset(ev->remote, 0, sizeof(ev->remote));
	if (family == TLS_AF_INET) {
		ev->family = 4;
		ev->local[0] = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		ev->remote[0] = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else if (family == TLS_AF_INET6) {
		ev->family = 6;
		BPF_CORE_READ_INTO(&ev->local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&ev->remote, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	} else {
		return false;
	}
	ev->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return true;
}

static __always_inline int tls_return(long ret)
{
	__u64 id = bpf_get_current_pid_tgid(), uid_gid, moved = 0, wakeup;
	struct tls_socket_key key = {};
	struct task_struct *task;
	struct weir_tls_event *ev;
	struct tls_call call, *active;
	struct sock *sk;
	__s32 fd, *known;
	__u8 head[8];
	__u32 len;

	active = bpf_map_lookup_elem(&tls_calls, &id);
	if (!active)
		return 0;
	if (active->depth) {
		active->depth--;
		return 0;
	}
	call = *active;
	tls_call_done(id);
	if (call.moved) {
		/* SSL_write_ex/SSL_read_ex: 1 on success, the count in *moved. */
		if (ret != 1 || bpf_probe_read_user(&moved, sizeof(moved), (void *)call.moved))
			return 0;
	} else if (ret > 0) {
		moved = ret;
	}
	if (moved < sizeof(head) || bpf_probe_read_user(head, sizeof(head), (void *)call.buf))
		return 0;
	if (!l7_http_request(head) && !l7_http_response(head))
		return 0;
	key.ssl = call.ssl;
	key.tgid = id >> 32;
	fd = call.fd;
	if (fd >= 0) {
		bpf_map_update_elem(&tls_sockets, &key, &fd, BPF_ANY);
	} else {
		known = bpf_map_lookup_elem(&tls_sockets, &key);
		if (!known) {
			tls_count(WEIR_TLS_OUTCOME_NO_SOCKET);
			return 0;
		}
		fd = *known;
	}
	sk = fd_sock(fd);
	wakeup = ring_wakeup_flags(&tls_ring, sizeof(*ev), TLS_WAKEUP_BYTES);
	ev = bpf_ringbuf_reserve(&tls_ring, sizeof(*ev), 0);
	if (!ev) {
		tls_count(WEIR_TLS_OUTCOME_LOST);
		return 0;
	}
	if (!tls_addresses(ev, sk)) {
		bpf_ringbuf_discard(ev, 0);
		tls_count(WEIR_TLS_OUTCOME_NOT_INET);
		return 0;
	}
	task = (void *)bpf_get_current_task();
	uid_gid = bpf_get_current_uid_gid();
	ev->time_ns = bpf_ktime_get_boot_ns(); /* the flows' clock (policy.h) */
	ev->ssl = call.ssl;
	ev->start_ns = BPF_CORE_READ(task, group_leader, start_time);
	ev->tgid = id >> 32;
	ev->tid = (__u32)id;
	ev->uid = (__u32)uid_gid;
	ev->fd = fd;
	ev->write = call.write;
	ev->bytes = moved > 0xffffffff ? 0xffffffff : moved;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (bpf_probe_read_kernel_str(ev->exe, sizeof(ev->exe),
				      BPF_CORE_READ(task, mm, exe_file, f_path.dentry, d_name.name)) < 0)
		ev->exe[0] = 0;
	len = moved > WEIR_TLS_PAYLOAD_BYTES ? WEIR_TLS_PAYLOAD_BYTES : moved;
	/* 1 to WEIR_TLS_PAYLOAD_BYTES, in a form the verifier follows. */
	len = ((len - 1) & (WEIR_TLS_PAYLOAD_BYTES - 1)) + 1;
	ev->len = len;
	if (bpf_probe_read_user(ev->data, len, (void *)call.buf)) {
		bpf_ringbuf_discard(ev, 0);
		tls_count(WEIR_TLS_OUTCOME_LOST);
		return 0;
	}
	bpf_ringbuf_submit(ev, wakeup);
	if (moved > WEIR_TLS_PAYLOAD_BYTES)
		tls_count(WEIR_TLS_OUTCOME_CUT);
	tls_count(WEIR_TLS_OUTCOME_REPORTED);
	return 0;
}

#endif
