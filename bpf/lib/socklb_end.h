/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Ending connected UDP sockets whose backend is gone. sendmsg4/6 do not run
 * for a send on a connected socket, so nothing on the send path can move it:
 * the agent runs this iter/udp program after a change, and a socket whose
 * translation (socket storage, written at connect) names a departed backend
 * is destroyed. The application gets an error on its next call (the socket
 * is disconnected, with ECONNABORTED pending) and connects again, to a backend
 * that is still there.
 */
#ifndef WEIR_LIB_SOCKLB_END_H
#define WEIR_LIB_SOCKLB_END_H

#include "socklb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_GONE);
	__type(key, struct weir_lb_gone_key);
	__type(value, __u8);
} lb_gone SEC(".maps");

/* 6.5+; absent on older kernels, where sockets are found and reported, not ended. */
extern int bpf_sock_destroy(struct sock_common *sk) __weak __ksym;

static __always_inline int lb_end_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	struct weir_lb_sock_revnat *revnat;
	struct weir_lb_gone_key key = {};
	struct sock *sk;
	char outcome = WEIR_LB_END_KEPT;

	if (!udp)
		return 0;
	sk = (struct sock *)udp;
	/* Connected: an unconnected socket names its peer at every send, and sendmsg translates that. */
	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	revnat = bpf_sk_storage_get(&lb_sock_revnat, sk, 0, 0);
	if (!revnat || revnat->backend_port != sk->__sk_common.skc_dport)
		return 0;
	key.service_id = revnat->service_id;
	__builtin_memcpy(key.addr, revnat->backend_addr, sizeof(key.addr));
	key.port = revnat->backend_port;
	if (!bpf_map_lookup_elem(&lb_gone, &key))
		return 0;
	if (bpf_ksym_exists(bpf_sock_destroy) && !bpf_sock_destroy((struct sock_common *)sk))
		outcome = WEIR_LB_END_ENDED;
	bpf_seq_write(ctx->meta->seq, &outcome, 1);
	return 0;
}

#endif
