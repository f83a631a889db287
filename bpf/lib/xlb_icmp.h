/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP "fragmentation needed" (IPv4) and "packet too big" (IPv6) about a
 * VIP's reply: the reals answer clients directly, so a router between a
 * real and a client that cannot carry a reply sends its complaint to the
 * reply's source — the VIP — and the route brings it here. The packet it
 * quotes (VIP -> client) names the connection; its real (the LRU's, else
 * the ring's) gets the ICMP packet encapsulated like the client's packets,
 * so the real's stack lowers its path MTU (Katran does the same).
 */
#ifndef WEIR_LIB_XLB_ICMP_H
#define WEIR_LIB_XLB_ICMP_H

#include "common.h"
#include "parse.h"
#include "xlb_maps.h"
#include "xlb_hash.h"
#include "xlb_encap.h"

#define XLB_ICMP_HLEN 8

static __always_inline bool xlb_is_too_big(const struct weir_pkt *pkt)
{
	if (pkt->family == 4)
		return pkt->l4_proto == IPPROTO_ICMP && pkt->icmp_type == 3 && pkt->icmp_code == 4;
	return pkt->l4_proto == IPPROTO_ICMPV6 && pkt->icmp_type == 2;
}

/* The quoted reply, read as the client's flow. Returns 0 when it quotes TCP or UDP whole. */
static __always_inline int xlb_quoted_flow(struct xdp_md *ctx, __u8 family, struct weir_xlb_flow *flow)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 *ports;

	if (family == 4) {
		struct iphdr *inner = data + ETH_HLEN + sizeof(struct iphdr) + XLB_ICMP_HLEN;

		if ((void *)(inner + 1) + 4 > data_end || inner->ihl != 5)
			return -1;
		flow->proto = inner->protocol;
		flow->src[0] = inner->daddr; /* the client */
		flow->dst[0] = inner->saddr; /* the VIP */
		ports = (void *)(inner + 1);
	} else {
		struct ipv6hdr *inner = data + ETH_HLEN + sizeof(struct ipv6hdr) + XLB_ICMP_HLEN;

		if ((void *)(inner + 1) + 4 > data_end)
			return -1;
		flow->proto = inner->nexthdr;
		__builtin_memcpy(flow->src, &inner->daddr, sizeof(flow->src));
		__builtin_memcpy(flow->dst, &inner->saddr, sizeof(flow->dst));
		ports = (void *)(inner + 1);
	}
	if (flow->proto != IPPROTO_TCP && flow->proto != IPPROTO_UDP)
		return -1;
	flow->sport = ports[1]; /* the client's port, the reply's destination */
	flow->dport = ports[0];
	flow->family = family;
	return 0;
}

/* XDP_TX to the real, or XDP_PASS when the ICMP is about no VIP's flow. */
__noinline int xlb_icmp_too_big(struct xdp_md *ctx, const struct weir_pkt *pkt)
{
	struct weir_xlb_flow flow = {};
	const struct weir_xlb_conn *known;
	const struct weir_xlb_real *stored;
	const struct weir_xlb_vip *found;
	struct weir_xlb_real real;
	struct weir_xlb_vip vip;
	__u32 index;

	if (!ctx || !pkt || pkt->l3_off != ETH_HLEN)
		return XDP_PASS;
	if (pkt->l4_off != ETH_HLEN + (pkt->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr)))
		return XDP_PASS;
	if (xlb_quoted_flow(ctx, pkt->family, &flow))
		return XDP_PASS;
	found = xlb_vip_lookup(flow.dst, flow.dport, flow.proto, flow.family);
	if (!found)
		return XDP_PASS;
	__builtin_memcpy(&vip, found, sizeof(vip));
	if (vip.forwarding == WEIR_XLB_FWD_NAT || (vip.flags & WEIR_XLB_VIP_F_LOCAL))
		return XDP_PASS;
	known = bpf_map_lookup_elem(&xlb_flows, &flow);
	index = known ? known->real : xlb_source_real(&vip, &flow);
	if (!index)
		index = xlb_ring_real(&vip, xlb_flow_hash(&flow, vip.flags));
	stored = bpf_map_lookup_elem(&xlb_reals, &index);
	if (!stored || !stored->family)
		return XDP_PASS;
	__builtin_memcpy(&real, stored, sizeof(real));
	weir_count(&xlb_counters, WEIR_XLB_C_ICMP_TOO_BIG, ctx->data_end - ctx->data);
	return xlb_encap(ctx, xlb_config_get(), &real, vip.forwarding == WEIR_XLB_FWD_GUE, xlb_flow_hash(&flow, 0),
			 pkt->family == 6);
}

#endif
