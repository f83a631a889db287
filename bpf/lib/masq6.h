/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * IPv6 masquerade at tc ingress: a local pod's TCP or UDP flow to an
 * address outside the cluster leaves as the node (its IPv6 address), and
 * replies are restored into the pod. The first packet of a flow (for TCP,
 * the pod's SYN) writes both directions; later packets, both ways, are
 * rewritten from the table. IPv4's masquerade shares NodePort's table
 * (nodeport.h).
 */
#ifndef WEIR_LIB_MASQ6_H
#define WEIR_LIB_MASQ6_H

#include "common.h"
#include "parse.h"
#include "policy.h"
#include "endpoint.h"

#define WEIR_MASQ6_MAX 65536

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_MASQ6_MAX);
	__type(key, struct weir_nat6_key);
	__type(value, struct weir_nat6);
} nat6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_pod_masq6);
} pod_masq6 SEC(".maps");

/* A new flow's entries are built here, not on the stack, which the tc
 * program and its policy check nearly fill. */
struct masq6_scratch {
	struct weir_nat6_key reverse_key;
	struct weir_nat6 forward, reverse;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq6_scratch);
} masq6_scratch SEC(".maps");

/* Is `addr` outside the cluster: no pod, node or host the ipcache knows? */
static __always_inline bool masq6_outside(const __be32 *addr)
{
	__u32 id = ipcache_identity(6, addr);

	return id == WEIR_IDENTITY_WORLD || id >= WEIR_IDENTITY_FIRST_CIDR;
}

/* Both entries of a new flow from pod to the outside; 0 when it is none. */
static __always_inline const struct weir_nat6 *masq6_new_flow(struct __sk_buff *skb, const struct weir_pkt *pkt,
								const struct weir_nat6_key *key)
{
	const struct weir_pod_masq6 *masq;
	struct masq6_scratch *s;
	__u32 zero = 0, i;

	if (!endpoint_sender(skb, pkt) || endpoint_link_scoped(pkt) || !masq6_outside(pkt->dst))
		return 0;
	if (!weir_opens_flow(key->proto, pkt->tcp_flags))
		return 0;
	masq = bpf_map_lookup_elem(&pod_masq6, &zero);
	s = bpf_map_lookup_elem(&masq6_scratch, &zero);
	if (!s || !masq || !(masq->node_addr[0] | masq->node_addr[1] | masq->node_addr[2] | masq->node_addr[3]))
		return 0;
	__builtin_memcpy(s->reverse_key.saddr, key->daddr, sizeof(s->reverse_key.saddr));
	__builtin_memcpy(s->reverse_key.daddr, masq->node_addr, sizeof(s->reverse_key.daddr));
	s->reverse_key.sport = key->dport;
	s->reverse_key.dport = key->sport;
	s->reverse_key.proto = key->proto;
	__builtin_memcpy(s->reverse.saddr, key->daddr, sizeof(s->reverse.saddr));
	__builtin_memcpy(s->reverse.daddr, key->saddr, sizeof(s->reverse.daddr));
	s->reverse.sport = key->dport;
	s->reverse.dport = key->sport;
	/* The node port: the pod's own, unless another flow holds it. */
	for (i = 0; i < 4; i++) {
		if (!bpf_map_update_elem(&nat6, &s->reverse_key, &s->reverse, BPF_NOEXIST))
			break;
		s->reverse_key.dport = bpf_htons(32768 + (bpf_get_prandom_u32() % 28000));
	}
	if (i == 4)
		return 0;
	__builtin_memcpy(s->forward.saddr, masq->node_addr, sizeof(s->forward.saddr));
	__builtin_memcpy(s->forward.daddr, key->daddr, sizeof(s->forward.daddr));
	s->forward.sport = s->reverse_key.dport;
	s->forward.dport = key->dport;
	if (bpf_map_update_elem(&nat6, key, &s->forward, BPF_ANY))
		return 0;
	return bpf_map_lookup_elem(&nat6, key);
}

/* Rewrites 16 bytes of address at `off`, with the transport checksum. */
static __always_inline int masq6_rewrite_addr(struct __sk_buff *skb, __u32 off, __u32 csum_off, const __be32 *from,
					      const __be32 *to)
{
	__s64 diff;

	if (!__builtin_memcmp(from, to, 16))
		return 0;
	diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR))
		return -1;
	return bpf_skb_store_bytes(skb, off, to, 16, 0);
}

static __always_inline int masq6_rewrite_port(struct __sk_buff *skb, __u32 off, __u32 csum_off, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* Translates one packet of an IPv6 masqueraded flow and sends it on past
 * the host's input routing; TC_ACT_OK for everything else. A global
 * function: its stack is its own, not the tc program's. */
__noinline int masq6_ingress(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	struct weir_nat6_key key = {};
	struct bpf_fib_lookup fib = {};
	const struct weir_nat6 *nat;
	__u32 csum_off, l3;
	int rc;

	if (!skb || !pkt || pkt->family != 6 || !pkt->has_l4 || pkt->is_fragment ||
	    (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP))
		return TC_ACT_OK;
	__builtin_memcpy(key.saddr, pkt->src, sizeof(key.saddr));
	__builtin_memcpy(key.daddr, pkt->dst, sizeof(key.daddr));
	key.sport = pkt->sport;
	key.dport = pkt->dport;
	key.proto = pkt->l4_proto;
	nat = bpf_map_lookup_elem(&nat6, &key);
	if (!nat)
		nat = masq6_new_flow(skb, pkt, &key);
	if (!nat)
		return TC_ACT_OK;
	l3 = pkt->l3_off;
	csum_off = pkt->l4_off + (pkt->l4_proto == IPPROTO_TCP ? 16 : 6);
	if (masq6_rewrite_addr(skb, l3 + 8, csum_off, key.saddr, nat->saddr) ||
	    masq6_rewrite_addr(skb, l3 + 24, csum_off, key.daddr, nat->daddr) ||
	    masq6_rewrite_port(skb, pkt->l4_off, csum_off, key.sport, nat->sport) ||
	    masq6_rewrite_port(skb, pkt->l4_off + 2, csum_off, key.dport, nat->dport))
		return TC_ACT_OK;
	fib.family = WEIR_AF_INET6;
	fib.l4_protocol = key.proto;
	__builtin_memcpy(fib.ipv6_src, nat->saddr, sizeof(fib.ipv6_src));
	__builtin_memcpy(fib.ipv6_dst, nat->daddr, sizeof(fib.ipv6_dst));
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	/* Past the host's input routing, which would refuse the node's own address as a source. */
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

#endif
