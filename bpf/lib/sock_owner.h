/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The process behind a local pod's flow. A cgroup/sock_create program
 * (weir_sock_owner in node.bpf.c, attached where the socket load balancer
 * is) tags every socket made below that cgroup with its creator, in socket
 * storage the kernel copies onto the sockets a listener accepts. A flow
 * event looks the pod's socket up by the packet's tuple in the pod's own
 * network namespace and reads the tag: one socket lookup per flow event,
 * none per packet of a known flow.
 */
#ifndef WEIR_LIB_SOCK_OWNER_H
#define WEIR_LIB_SOCK_OWNER_H

#include "common.h"
#include "../api/policy.h"

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct weir_sock_owner);
} sock_owners SEC(".maps");

/* The lookup's tuple: off the stack, which the pod path's programs have
 * none of to spare. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpf_sock_tuple);
} sock_owner_tuple SEC(".maps");

/* The tuple's key, read from .rodata: a key on the stack would cost the
 * callers eight bytes they lack. */
static const __u32 sock_owner_tuple_key = 0;

/* In the creating process's context: remember it on the socket. */
static __always_inline void sock_owner_tag(struct bpf_sock *sk)
{
	struct weir_sock_owner *owner = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!owner)
		return;
	owner->tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(owner->comm, sizeof(owner->comm));
}

/*
 * Names, in flow event `ev`, the creator of the local pod's socket of its
 * flow: its source's when `local_is_source` (the pod sent the packet),
 * else its destination's. `netnsid_plus_one` is the pod's endpoint's (0:
 * unknown). Left 0 when no socket or no tag is found (a socket made
 * before Weir started, a connection in TIME_WAIT, ICMP). The tuple is
 * read from the event, not the packet: fewer values live across the
 * lookup, on a stack the pod path's programs have little of.
 */
static __always_inline void sock_owner_note(struct __sk_buff *skb, struct weir_flow_event *ev,
					    __u32 netnsid_plus_one, bool local_is_source)
{
	struct bpf_sock_tuple *tuple;
	const struct weir_sock_owner *owner;
	struct bpf_sock *sk;
	__u32 size;

	if (!netnsid_plus_one || (ev->protocol != IPPROTO_TCP && ev->protocol != IPPROTO_UDP))
		return;
	tuple = bpf_map_lookup_elem(&sock_owner_tuple, &sock_owner_tuple_key);
	if (!tuple)
		return;
	/* As the pod's stack would receive it: the remote end is the source. */
	if (ev->family == 4) {
		tuple->ipv4.saddr = local_is_source ? ev->dst[0] : ev->src[0];
		tuple->ipv4.daddr = local_is_source ? ev->src[0] : ev->dst[0];
		tuple->ipv4.sport = local_is_source ? ev->dport : ev->sport;
		tuple->ipv4.dport = local_is_source ? ev->sport : ev->dport;
		size = sizeof(tuple->ipv4);
	} else {
		__builtin_memcpy(tuple->ipv6.saddr, local_is_source ? ev->dst : ev->src, sizeof(tuple->ipv6.saddr));
		__builtin_memcpy(tuple->ipv6.daddr, local_is_source ? ev->src : ev->dst, sizeof(tuple->ipv6.daddr));
		tuple->ipv6.sport = local_is_source ? ev->dport : ev->sport;
		tuple->ipv6.dport = local_is_source ? ev->sport : ev->dport;
		size = sizeof(tuple->ipv6);
	}
	if (ev->protocol == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(skb, tuple, size, netnsid_plus_one - 1, 0);
	else
		sk = bpf_sk_lookup_udp(skb, tuple, size, netnsid_plus_one - 1, 0);
	if (!sk)
		return;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (owner) {
		if (local_is_source)
			ev->src_pid = owner->tgid;
		else
			ev->dst_pid = owner->tgid;
		__builtin_memcpy(ev->owner_comm, owner->comm, sizeof(ev->owner_comm));
	}
	bpf_sk_release(sk);
}

#endif
