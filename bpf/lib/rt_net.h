/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Network operations: connect, bind and unconnected sends on the cgroup
 * sock_addr hooks (which can refuse them before anything reaches the network), socket creation on
 * cgroup/sock_create, listen and accept on their syscall tracepoints (which
 * can only report). The process is the kernel's memory of the caller.
 */
#ifndef WEIR_LIB_RT_NET_H
#define WEIR_LIB_RT_NET_H

#include "rt_judge.h"
#include "fd_sock.h"

#define RT_AF_INET 2
#define RT_AF_INET6 10

static __always_inline bool rt_v4_mapped(const __u32 *addr)
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
}

/* Judges and posts a network event already in sc->net as operation `op`
 * (an unconnected send is judged by connect rules). An event no rule
 * matched is posted only when `post_unmatched`. Returns the errno of a
 * refusal, 0 to let the operation go ahead. */
static __always_inline int rt_net_decide(struct rt_scratch *sc, __u32 *addr, __u16 port, __u8 op,
					 bool post_unmatched, bool lsm)
{
	struct weir_rt_net_event *ev = &sc->net;
	struct rt_judge j = {};
	struct weir_rt_rule *rule = NULL;
	__u32 slot = 0;

	rt_subject_process(sc, &j.subject, ev->hdr.pid, &ev->hdr.ppid, &ev->hdr.start_time);
	j.subject.op = op;
	j.subject.uid = ev->hdr.uid;
	j.subject.cgroup_id = ev->hdr.cgroup_id;
	j.subject.args = sc->slack;
	j.subject.args_len = 0;
	j.subject.file = sc->slack;
	j.subject.file_len = 0;
	j.subject.family = ev->family;
	j.subject.port = port;
	j.subject.addr[0] = addr[0];
	j.subject.addr[1] = addr[1];
	j.subject.addr[2] = addr[2];
	j.subject.addr[3] = addr[3];
	/* An AF_INET6 socket reaches IPv4 peers by their IPv4-mapped form
	 * (::ffff:a.b.c.d): the traffic is IPv4, and so is its judgement.
	 * The event keeps the address as the program gave it. */
	if (ev->family == 6 && rt_v4_mapped(addr)) {
		j.subject.family = 4;
		j.subject.addr[0] = addr[3];
		j.subject.addr[1] = 0;
		j.subject.addr[2] = 0;
		j.subject.addr[3] = 0;
	}
	rule = rt_judge(&j, &slot);
	if (!rule) {
		if (!lsm && post_unmatched)
			rt_post(ev, sizeof(*ev));
		return 0;
	}
	/* The LSM hook acts only on refusals; the cgroup hook after it reports. */
	if (lsm && rule->action != WEIR_RT_ACTION_DENY)
		return 0;
	ev->hdr.rule = slot + 1;
	ev->hdr.action = rule->action;
	if (lsm)
		ev->hdr.flags |= WEIR_RT_F_LSM;
	if (rule->action == WEIR_RT_ACTION_DENY)
		ev->hdr.errno_ = rule->errno_;
	if (rt_rate_allows(slot, rule->rate_per_sec, ev->hdr.ktime))
		rt_post(ev, sizeof(*ev));
	return rule->action == WEIR_RT_ACTION_DENY ? rule->errno_ : 0;
}

/* connect, bind and unconnected sends (sendto/sendmsg with an address, by
 * a system call or io_uring: type SENDMSG, judged by connect rules, posted
 * only when a rule matches, since a busy UDP client sends thousands a
 * second). Returns 1 to allow, 0 to refuse (the cgroup hook convention). */
static __always_inline int rt_sock_addr(struct bpf_sock_addr *ctx, __u8 type, const int family)
{
	struct weir_rt_config *config = rt_config_get();
	struct weir_rt_net_event *ev;
	struct rt_scratch *sc;
	bool remote = type != WEIR_RT_EV_BIND;
	__u8 op = type == WEIR_RT_EV_SENDMSG ? WEIR_RT_EV_CONNECT : type;
	bool post_unmatched = type != WEIR_RT_EV_SENDMSG && config && config->network_events;
	__u32 *addr;
	__u16 port;
	int err;

	if (!config || (!(config->ops & WEIR_RT_OP(op)) && !post_unmatched))
		return 1;
	sc = rt_scratch();
	if (!sc)
		return 1;
	ev = &sc->net;
	rt_header_current(&ev->hdr, type);
	__builtin_memset(ev->local_addr, 0, sizeof(ev->local_addr));
	__builtin_memset(ev->remote_addr, 0, sizeof(ev->remote_addr));
	ev->local_port = 0;
	ev->remote_port = 0;
	addr = remote ? ev->remote_addr : ev->local_addr;
	port = bpf_ntohs((__u16)ctx->user_port);
	if (family == 4) {
		addr[0] = ctx->user_ip4;
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	}
	if (remote)
		ev->remote_port = port;
	else
		ev->local_port = port;
	ev->family = family;
	ev->protocol = ctx->protocol;
	ev->sock_type = ctx->type;

	err = rt_net_decide(sc, addr, port, op, post_unmatched, false);
	if (!err)
		return 1;
	if (rt_have_set_retval)
		bpf_set_retval(-err);
	return 0;
}

static __always_inline int rt_sock_create(struct bpf_sock *sk)
{
	struct weir_rt_config *config = rt_config_get();
	struct weir_rt_net_event *ev;
	struct rt_scratch *sc;
	__u32 none[4] = {};
	int err;

	if (!config || !(config->ops & WEIR_RT_OP(WEIR_RT_EV_SOCKET)))
		return 1;
	sc = rt_scratch();
	if (!sc)
		return 1;
	ev = &sc->net;
	rt_header_current(&ev->hdr, WEIR_RT_EV_SOCKET);
	__builtin_memset(ev->local_addr, 0, sizeof(ev->local_addr));
	__builtin_memset(ev->remote_addr, 0, sizeof(ev->remote_addr));
	ev->local_port = 0;
	ev->remote_port = 0;
	ev->family = sk->family == RT_AF_INET ? 4 : sk->family == RT_AF_INET6 ? 6 : sk->family;
	ev->protocol = sk->protocol;
	ev->sock_type = sk->type;
	/* Socket events are posted only when a rule selects them. */
	err = rt_net_decide(sc, none, 0, WEIR_RT_EV_SOCKET, false, false);
	if (!err)
		return 1;
	if (rt_have_set_retval)
		bpf_set_retval(-err);
	return 0;
}

/* LISTEN and ACCEPT: reported with the socket's own addresses. */
static __always_inline int rt_sock_report(long fd, __u8 type)
{
	struct weir_rt_config *config = rt_config_get();
	struct weir_rt_net_event *ev;
	struct rt_scratch *sc;
	struct sock *sk;
	__u16 family;

	if (!config || (!(config->ops & WEIR_RT_OP(type)) && !config->network_events) || !rt_in_scope())
		return 0;
	sk = fd_sock(fd);
	sc = rt_scratch();
	if (!sk || !sc)
		return 0;
	ev = &sc->net;
	rt_header_current(&ev->hdr, type);
	__builtin_memset(ev->local_addr, 0, sizeof(ev->local_addr));
	__builtin_memset(ev->remote_addr, 0, sizeof(ev->remote_addr));
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == RT_AF_INET) {
		ev->family = 4;
		ev->local_addr[0] = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		ev->remote_addr[0] = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else if (family == RT_AF_INET6) {
		ev->family = 6;
		BPF_CORE_READ_INTO(&ev->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&ev->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	} else {
		return 0;
	}
	ev->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	ev->protocol = BPF_CORE_READ(sk, sk_protocol);
	ev->sock_type = BPF_CORE_READ(sk, sk_type);
	rt_net_decide(sc, ev->local_addr, ev->local_port, type, config->network_events, false);
	return 0;
}

#endif
