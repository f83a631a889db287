/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Passive health for the socket load balancer: a translated TCP connection
 * that the backend refuses, resets or lets time out marks the backend
 * suspect (sockops, the moment the socket closes), and a new connection is
 * steered to another active backend while the mark holds. A dead backend so
 * costs one failed connection per client node, not one per connection until
 * the agent's next probe.
 */
#ifndef WEIR_LIB_SOCKLB_HEALTH_H
#define WEIR_LIB_SOCKLB_HEALTH_H

#include "socklb.h"

#define WEIR_ETIMEDOUT 110
#define WEIR_ECONNREFUSED 111
#define WEIR_ECONNRESET 104
#define WEIR_LB_AF_INET 2
#define WEIR_LB_AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_LB_MAX_SUSPECTS);
	__type(key, struct weir_lb_suspect_key);
	__type(value, struct weir_lb_suspect);
} lb_suspects SEC(".maps");

/*
 * When the latest mark was made (bpf_ktime_get_ns()): while it is older than
 * a mark lasts, no backend can be suspect, and a connect skips the
 * lb_suspects lookup (a hash of the backend and a bucket in a cold table).
 * An array of one, pinned, so an agent restart keeps it with the marks.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lb_suspect_last SEC(".maps");

static __always_inline bool lb_any_suspect(__u64 now)
{
	__u32 zero = 0;
	const __u64 *latest = bpf_map_lookup_elem(&lb_suspect_last, &zero);

	return latest && *latest && now - *latest < WEIR_LB_SUSPECT_SECONDS * 1000000000ULL;
}

static __always_inline bool lb_is_suspect(const struct weir_lb_backend *backend, __u64 now)
{
	struct weir_lb_suspect_key key = {};
	const struct weir_lb_suspect *mark;

	__builtin_memcpy(key.addr, backend->addr, sizeof(key.addr));
	key.port = backend->port;
	key.proto = backend->proto;
	mark = bpf_map_lookup_elem(&lb_suspects, &key);
	return mark && now - mark->marked_ns < WEIR_LB_SUSPECT_SECONDS * 1000000000ULL;
}

struct lb_healthy_scan {
	struct weir_lb_key key;
	__u64 now;
	__u32 start;
	__u32 active;
	__u16 found; /* a slot whose backend is not suspect; 0 for none */
};

static long lb_healthy_step(__u64 i, void *data)
{
	struct lb_healthy_scan *scan = data;
	const struct weir_lb_slot *slot;

	if (!scan->active)
		return 1;
	scan->key.slot = (__u16)((scan->start + (__u32)i) % scan->active) + 1;
	slot = bpf_map_lookup_elem(&lb_services, &scan->key);
	if (!slot || lb_is_suspect(&slot->backend, scan->now))
		return 0;
	scan->found = scan->key.slot;
	return 1;
}

/*
 * Another active backend of the frontend than a suspect one: the first that
 * is not suspect, from a random slot on. 0 when every one is suspect.
 */
static __always_inline const struct weir_lb_backend *lb_pick_healthy(struct weir_lb_key *key,
								     const struct weir_lb_slot *frontend,
								     __u64 now, __u32 *id_out)
{
	struct lb_healthy_scan scan = { .now = now, .active = frontend->active };
	const struct weir_lb_slot *slot;

	if (!scan.active)
		return 0;
	__builtin_memcpy(&scan.key, key, sizeof(scan.key));
	scan.start = bpf_get_prandom_u32() % scan.active;
	bpf_loop(scan.active, lb_healthy_step, &scan, 0);
	if (!scan.found)
		return 0;
	key->slot = scan.found;
	slot = bpf_map_lookup_elem(&lb_services, key);
	key->slot = 0;
	if (!slot)
		return 0;
	*id_out = slot->backend_id;
	return &slot->backend;
}

static __always_inline const struct weir_lb_backend *lb_avoid_suspect(struct weir_lb_key *key,
								      const struct weir_lb_slot *frontend,
								      const struct weir_lb_backend *chosen,
								      __u64 client, __u32 *id)
{
	const struct weir_lb_backend *other;
	__u64 now = bpf_ktime_get_ns();
	__u32 other_id = 0;

	if (!lb_any_suspect(now) || !lb_is_suspect(chosen, now))
		return chosen;
	other = lb_pick_healthy(key, frontend, now, &other_id);
	if (!other)
		return chosen; /* every active backend is suspect: better one of them than none */
	if (frontend->flags & WEIR_LB_F_AFFINITY) {
		struct weir_lb_affinity_key affinity_key = { .client = client, .service_id = frontend->service_id };
		struct weir_lb_affinity fresh = { .backend_id = other_id, .last_used = lb_now_seconds() };

		bpf_map_update_elem(&lb_affinity, &affinity_key, &fresh, BPF_ANY);
	}
	*id = other_id;
	return other;
}

/*
 * The reverse translation of the TCP connection sockops sees (lb_revnat,
 * keyed by socket cookie and backend, as connect4/6 wrote it), or 0 if the
 * balancer did not translate it. An AF_INET6 socket to an IPv4-mapped
 * backend was keyed as IPv4.
 */
static __always_inline const struct weir_lb_revnat *lb_translated_tcp(struct bpf_sock_ops *skops,
								   struct weir_lb_revnat_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	/* sockops has the network-order port in the upper half of remote_port. */
	key->port = (__u16)(skops->remote_port >> 16);
	if (skops->family == WEIR_LB_AF_INET) {
		key->family = 4;
		key->addr[0] = skops->remote_ip4;
	} else if (skops->family == WEIR_LB_AF_INET6) {
		key->addr[0] = skops->remote_ip6[0];
		key->addr[1] = skops->remote_ip6[1];
		key->addr[2] = skops->remote_ip6[2];
		key->addr[3] = skops->remote_ip6[3];
		key->family = 6;
		if (key->addr[0] == 0 && key->addr[1] == 0 && key->addr[2] == bpf_htonl(0x0000ffff)) {
			key->family = 4;
			key->addr[0] = key->addr[3];
			key->addr[2] = 0;
			key->addr[3] = 0;
		}
	} else {
		return 0;
	}
	key->cookie = bpf_get_socket_cookie(skops);
	return bpf_map_lookup_elem(&lb_revnat, key);
}

/* A translated connection failed: refused, reset or timed out by its backend. */
static __always_inline void lb_mark_suspect(struct bpf_sock_ops *skops)
{
	struct weir_lb_suspect_key key = {};
	struct weir_lb_suspect fresh = { .failures = 1 };
	struct weir_lb_suspect *mark;
	struct weir_lb_revnat_key translated;
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;
	__u64 *latest;
	__u32 zero = 0;
	int err;

	if (!sk)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	err = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_err);
	if (err != WEIR_ECONNREFUSED && err != WEIR_ECONNRESET && err != WEIR_ETIMEDOUT)
		return;
	if (!lb_translated_tcp(skops, &translated))
		return;
	__builtin_memcpy(key.addr, translated.addr, sizeof(key.addr));
	key.port = translated.port;
	key.proto = IPPROTO_TCP;
	fresh.marked_ns = bpf_ktime_get_ns();
	latest = bpf_map_lookup_elem(&lb_suspect_last, &zero);
	if (latest)
		*latest = fresh.marked_ns;
	mark = bpf_map_lookup_elem(&lb_suspects, &key);
	if (mark) {
		mark->marked_ns = fresh.marked_ns;
		__sync_fetch_and_add(&mark->failures, 1);
		return;
	}
	bpf_map_update_elem(&lb_suspects, &key, &fresh, BPF_ANY);
}

static __always_inline int lb_sockops(struct bpf_sock_ops *skops)
{
	struct weir_lb_revnat_key translated;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Only connections the balancer translated are followed. */
		if (lb_translated_tcp(skops, &translated))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			lb_mark_suspect(skops);
		break;
	}
	return 1;
}

#endif
