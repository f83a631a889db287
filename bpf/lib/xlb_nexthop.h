/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Where a forwarded packet leaves (spec.nextHop). Sender and Gateway: out
 * of the interface it came in, to the MACs xlb_macs wrote (XDP_TX), at the
 * cost of one branch. Route: the kernel's FIB and neighbour table, asked
 * about the packet as it leaves (the outer header after encapsulation, the
 * real after NAT, the client for a NAT reply) as if it were forwarded from
 * the receiving interface, choose the interface and the MACs: XDP_TX when
 * that is the receiving interface, else XDP_REDIRECT to it. A next hop
 * whose MAC is not known yet goes to the stack, addressed to this host,
 * which forwards it and resolves the neighbour (later packets find it).
 * What no route forwards is dropped with its reason.
 */
#ifndef WEIR_LIB_XLB_NEXTHOP_H
#define WEIR_LIB_XLB_NEXTHOP_H

#include "common.h"
#include "xlb_maps.h"

#define XLB_AF_INET 2
#define XLB_AF_INET6 10

/*
 * The packet at ctx, ready to leave, with the MACs xlb_macs wrote (its
 * source: the MAC the packet arrived addressed to, the receiving
 * interface's own). A global function: the Sender and Gateway paths carry
 * none of it.
 */
__noinline int xlb_route(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	void *data, *data_end;
	struct ethhdr *eth;
	__u32 ingress;
	__u64 len;
	long rc;

	if (!ctx)
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED;
	len = data_end - data;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_ABORTED;
		fib.family = XLB_AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_ABORTED;
		fib.family = XLB_AF_INET6;
		fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
		fib.l4_protocol = ip6->nexthdr;
		fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, sizeof(fib.ipv6_dst));
	} else {
		return XDP_ABORTED;
	}
	ingress = ctx->ingress_ifindex;
	fib.ifindex = ingress;
	/* Flags 0: the lookup a router makes for a packet that came in on
	 * `ingress` (policy rules, forwarding on that interface, the MTU). */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		__builtin_memcpy(eth->h_dest, fib.dmac, 6);
		__builtin_memcpy(eth->h_source, fib.smac, 6);
		if (fib.ifindex == ingress)
			return XDP_TX;
		weir_count(&xlb_counters, WEIR_XLB_C_ROUTE_REDIRECT, len);
		return bpf_redirect(fib.ifindex, 0);
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		/* To this host: the stack forwards what is addressed to it. */
		__builtin_memcpy(eth->h_dest, eth->h_source, 6);
		weir_count(&xlb_counters, WEIR_XLB_C_ROUTE_NO_NEIGH, len);
		return XDP_PASS;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return xlb_drop(WEIR_DROP_XLB_ROUTE_MTU, len);
	default:
		return xlb_drop(WEIR_DROP_XLB_NO_ROUTE, len);
	}
}

/* The verdict of a packet ready to leave: XDP_TX, unless the route decides. */
static __always_inline int xlb_leave(struct xdp_md *ctx, const struct weir_xlb_config *cfg)
{
	if (cfg && cfg->next_hop == WEIR_XLB_NEXT_HOP_ROUTE)
		return xlb_route(ctx);
	return XDP_TX;
}

#endif
