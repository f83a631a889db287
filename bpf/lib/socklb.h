/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket load balancing: translate a service address to a backend inside
 * connect() and sendmsg(), and back inside getpeername() and recvmsg(), so
 * no packet is ever NATed and the application sees the service address.
 */
#ifndef WEIR_LIB_SOCKLB_H
#define WEIR_LIB_SOCKLB_H

#include "common.h"
#include "lb.h"
#include "chaos_service.h"
#include "socklb_quiet.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_LB_MAX_REVNAT);
	__type(key, struct weir_lb_revnat_key);
	__type(value, struct weir_lb_revnat);
} lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weir_lb_sock_revnat);
} lb_sock_revnat SEC(".maps");

/* cgroup id -> 1: processes in these cgroups (pods that opted out) are not translated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_OPT_OUT);
	__type(key, __u64);
	__type(value, __u8);
} lb_opt_out SEC(".maps");

/* True when the calling process's cgroup opted out. */
static __always_inline bool lb_opted_out(void)
{
	__u64 cgroup_id;

	if (lb_quiet_for(WEIR_LB_QUIET_OPT_OUT_FLAG))
		return false;
	cgroup_id = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&lb_opt_out, &cgroup_id) != 0;
}

/*
 * The address a call names, as a frontend key (slot 0). `family` is a
 * compile-time constant of each entry program: a program of one family may
 * not even read the other family's context fields. An AF_INET6 socket
 * names an IPv4 service by its IPv4-mapped form (::ffff:a.b.c.d): that is
 * the IPv4 key. Returns -1 for a call not balanced, 1 for a mapped
 * address (written back mapped, see lb_write_ctx), 0 otherwise.
 */
static __always_inline int lb_key_from_ctx(struct bpf_sock_addr *ctx, struct weir_lb_key *key, const __u8 family)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return -1;
	key->proto = ctx->protocol;
	key->port = (__u16)ctx->user_port;
	if (family == 4) {
		key->family = 4;
		key->addr[0] = ctx->user_ip4;
		return 0;
	}
	key->addr[0] = ctx->user_ip6[0];
	key->addr[1] = ctx->user_ip6[1];
	key->addr[2] = ctx->user_ip6[2];
	key->addr[3] = ctx->user_ip6[3];
	if (key->addr[0] == 0 && key->addr[1] == 0 && key->addr[2] == bpf_htonl(0x0000ffff)) {
		key->family = 4;
		key->addr[0] = key->addr[3];
		key->addr[2] = 0;
		key->addr[3] = 0;
		return 1;
	}
	key->family = 6;
	return 0;
}

/* Writes an address of the key's family into the call; an IPv4 address
 * into an AF_INET6 call goes in its mapped form. */
static __always_inline void lb_write_ctx(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port,
					 const __u8 family, const bool mapped)
{
	if (family == 4) {
		ctx->user_ip4 = addr[0];
	} else if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = port;
}

/* Passive health (socklb_health.h): another backend than a suspect one, if any. */
static __always_inline const struct weir_lb_backend *lb_avoid_suspect(struct weir_lb_key *key,
								      const struct weir_lb_slot *frontend,
								      const struct weir_lb_backend *chosen,
								      __u64 client, __u32 *id);

/* Chooses a backend for a new connection from this socket. */
static __always_inline const struct weir_lb_backend *lb_choose(struct bpf_sock_addr *ctx, struct weir_lb_key *key,
							       const struct weir_lb_slot *frontend, __u32 *id)
{
	/* Affinity is per client network namespace; Maglev hashes the socket. */
	__u64 client = frontend->flags & WEIR_LB_F_AFFINITY ? bpf_get_netns_cookie(ctx) : 0;
	__u64 hash = frontend->flags & WEIR_LB_F_MAGLEV ? weir_mix64(bpf_get_socket_cookie(ctx)) : 0;
	const struct weir_lb_backend *chosen = lb_pick(key, frontend, client, hash, id);

	return chosen ? lb_avoid_suspect(key, frontend, chosen, client, id) : 0;
}

/*
 * The reverse translation of a call: (socket cookie, backend) -> service, in
 * lb_revnat. TCP connects and unconnected UDP sends keep it there: an update
 * of the preallocated LRU table allocates nothing, where socket storage
 * allocates (and charges) two objects per socket. A TCP socket connects once,
 * and its entry names the backend too, so an entry it outlives is only ever
 * matched by the same socket connected straight to the same backend.
 */
static __always_inline void lb_remember(struct bpf_sock_addr *ctx, const struct weir_lb_key *key,
					const struct weir_lb_backend *backend, __u32 service_id)
{
	struct weir_lb_revnat_key revnat_key = {};
	struct weir_lb_revnat revnat = {};

	revnat_key.cookie = bpf_get_socket_cookie(ctx);
	revnat_key.family = key->family;
	revnat_key.port = backend->port;
	__builtin_memcpy(revnat_key.addr, backend->addr, sizeof(revnat_key.addr));
	__builtin_memcpy(revnat.addr, key->addr, sizeof(revnat.addr));
	revnat.port = key->port;
	revnat.service_id = service_id;
	bpf_map_update_elem(&lb_revnat, &revnat_key, &revnat, BPF_ANY);
}

/*
 * A connected UDP socket keeps its translation with the socket (socket
 * storage): it may connect again and again, and the iter/udp program that
 * ends sockets of a departed backend (socklb_end.h) reads it there.
 */
static __always_inline void lb_remember_on_socket(struct bpf_sock_addr *ctx, const struct weir_lb_key *key,
						  const struct weir_lb_backend *backend, __u32 service_id)
{
	struct weir_lb_sock_revnat *revnat;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	revnat = bpf_sk_storage_get(&lb_sock_revnat, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!revnat)
		return;
	__builtin_memcpy(revnat->backend_addr, backend->addr, sizeof(revnat->backend_addr));
	__builtin_memcpy(revnat->service_addr, key->addr, sizeof(revnat->service_addr));
	revnat->backend_port = backend->port;
	revnat->service_port = key->port;
	revnat->service_id = service_id;
}

/* A UDP socket connected again, to something that is no service, forgets. */
static __always_inline void lb_forget_on_socket(struct bpf_sock_addr *ctx, const struct weir_lb_key *key)
{
	struct bpf_sock *sk = ctx->sk;

	if (sk && key->proto == IPPROTO_UDP)
		bpf_sk_storage_delete(&lb_sock_revnat, sk);
}

/*
 * connect() and sendmsg(): rewrite a service address to a backend and
 * remember the pair for the reverse direction. Returns 0 when the call must
 * fail (no backend, and the frontend asks for an errno), 1 otherwise.
 */
static __always_inline int lb_translate(struct bpf_sock_addr *ctx, const __u8 family, const bool connected)
{
	struct weir_lb_key key;
	const struct weir_lb_slot *frontend;
	const struct weir_lb_backend *backend;
	__u32 id = 0, chaos_error = 0, chaos_slot = 0;
	int mapped = lb_key_from_ctx(ctx, &key, family);

	if (mapped < 0)
		return 1;
	frontend = bpf_map_lookup_elem(&lb_services, &key);
	if (!frontend) {
		if (connected)
			lb_forget_on_socket(ctx, &key);
		return 1;
	}
	if (lb_opted_out())
		return 1;
	switch (chaos_service(&key, &chaos_error, &chaos_slot)) {
	case WEIR_CHAOS_SERVICE_NONE:
		break;
	case WEIR_CHAOS_SERVICE_REFUSE:
		bpf_set_retval(-(int)chaos_error);
		return 0;
	case WEIR_CHAOS_SERVICE_BLACKHOLE:
		/* Sent nowhere: the pod path drops what goes there, so a
		 * connect() times out. Nothing to show back. */
		if (connected)
			lb_forget_on_socket(ctx, &key);
		chaos_blackhole_addr(key.addr, key.family, chaos_slot);
		lb_write_ctx(ctx, key.addr, key.port, family, mapped);
		return 1;
	}
	backend = frontend->active ? lb_choose(ctx, &key, frontend, &id) : 0;
	if (!backend || backend->family != key.family) {
		lb_count(frontend->service_id, 0);
		if (!frontend->no_backend_errno)
			return 1;
		bpf_set_retval(-(int)frontend->no_backend_errno);
		return 0;
	}
	lb_count(frontend->service_id, id);

	if (connected && key.proto == IPPROTO_UDP)
		lb_remember_on_socket(ctx, &key, backend, frontend->service_id);
	else
		lb_remember(ctx, &key, backend, frontend->service_id);
	lb_write_ctx(ctx, backend->addr, backend->port, family, mapped);
	return 1;
}

/* getpeername() and recvmsg(): show the service address the call was made to. */
static __always_inline int lb_reverse(struct bpf_sock_addr *ctx, const __u8 family)
{
	struct weir_lb_revnat_key revnat_key = {};
	struct weir_lb_key key;
	const struct weir_lb_revnat *revnat;
	struct weir_lb_sock_revnat *on_socket;
	struct bpf_sock *sk = ctx->sk;
	int mapped = lb_key_from_ctx(ctx, &key, family);

	if (mapped < 0)
		return 1;
	on_socket = sk && key.proto == IPPROTO_UDP ? bpf_sk_storage_get(&lb_sock_revnat, sk, 0, 0) : 0;
	if (on_socket && on_socket->backend_port == key.port &&
	    !__builtin_memcmp(on_socket->backend_addr, key.addr, sizeof(key.addr))) {
		lb_write_ctx(ctx, on_socket->service_addr, on_socket->service_port, family, mapped);
		return 1;
	}
	revnat_key.cookie = bpf_get_socket_cookie(ctx);
	revnat_key.family = key.family;
	revnat_key.port = key.port;
	__builtin_memcpy(revnat_key.addr, key.addr, sizeof(revnat_key.addr));
	revnat = bpf_map_lookup_elem(&lb_revnat, &revnat_key);
	if (revnat)
		lb_write_ctx(ctx, revnat->addr, revnat->port, family, mapped);
	return 1;
}

#endif
