// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The XDP L4 load balancer (`weir lb`), Katran's design: a packet for a
 * VIP (address, port, protocol; port 0: any) finds its connection in the
 * connection table (one LRU for every core, each core with its own free
 * list), or takes the VIP's Maglev ring (SYNs always do, so a new
 * connection follows the ring as it is now), and leaves encapsulated to its
 * real (IPIP or GUE, direct server return) or rewritten to it (NAT), out
 * of the interface it came in, or, with next hop Route, out of the one the
 * kernel's route names (xlb_nexthop.h). Everything else passes to the stack: ARP,
 * traffic of this host, a NAT real's replies after their translation back.
 *
 * An ICMP too-big about a VIP's reply (a router on the way to the client
 * could not carry what a real sent) goes on to that real, encapsulated.
 *
 * Dropped, with their reason: IP fragments and IPv4 options (Katran's
 * rule: a fragment carries no ports to balance by), VIP packets with IPv6
 * extension headers, VIPs without a real.
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/xlb_parse.h"
#include "../lib/traffic.h"
#include "../lib/xlb_maps.h"
#include "../lib/xlb_hash.h"
#include "../lib/xlb_encap.h"
#include "../lib/xlb_nat.h"
#include "../lib/xlb_probe.h"
#include "../lib/xlb_icmp.h"

/*
 * QUIC: the real a short header's connection id names, or 0. Long headers
 * (a connection's first packets, before the server chose its id) and ids
 * of no known server take the LRU and the ring like any UDP flow.
 */
static __always_inline __u32 xlb_quic_real(struct xdp_md *ctx, __u32 l4_off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *quic = data + (l4_off & 0xFF) + sizeof(struct udphdr);
	__u32 server, *real;

	if ((void *)(quic + 3) > data_end || (quic[0] & 0xC0) != 0x40)
		return 0;
	server = ((__u32)quic[1] << 8) | quic[2];
	if (!server)
		return 0;
	real = bpf_map_lookup_elem(&xlb_quic_servers, &server);
	return real ? *real : 0;
}

/* A packet for a VIP: choose its real and send it there. Inlined: a
 * call to a global function costs the hot path its frame (see docs/lb.md,
 * "Cost"). `cfg`: the configuration, looked up once per packet. */
static __always_inline int xlb_forward(struct xdp_md *ctx, const struct weir_pkt *pkt,
				       const struct weir_xlb_vip *stored_vip, const struct weir_xlb_config *cfg)
{
	struct weir_xlb_flow flow;
	struct weir_xlb_real real;
	struct weir_xlb_vip vip;
	const struct weir_xlb_real *stored;
	const struct weir_xlb_conn *known = 0;
	__u32 index, hash = 0;
	bool hashed = false;
	__u64 len;
	bool syn;

	/* One snapshot: the agent may rewrite the VIP while this runs. */
	__builtin_memcpy(&vip, stored_vip, sizeof(vip));
	len = ctx->data_end - ctx->data;
	weir_count(&xlb_vip_stats, vip.index, len);
	if (vip.flags & WEIR_XLB_VIP_F_LOCAL) {
		weir_count(&xlb_counters, WEIR_XLB_C_LOCAL, len);
		return XDP_PASS;
	}
	/* Every byte written once (the key has no holes): no zeroing first. */
	__builtin_memcpy(flow.src, pkt->src, sizeof(flow.src));
	__builtin_memcpy(flow.dst, pkt->dst, sizeof(flow.dst));
	flow.sport = pkt->sport;
	flow.dport = pkt->dport;
	flow.proto = pkt->l4_proto;
	flow.family = pkt->family;
	flow.pad = 0;

	syn = pkt->l4_proto == IPPROTO_TCP && (pkt->tcp_flags & WEIR_TCP_SYN) && !(pkt->tcp_flags & WEIR_TCP_ACK);
	if ((vip.flags & WEIR_XLB_VIP_F_QUIC) && pkt->l4_proto == IPPROTO_UDP) {
		index = xlb_quic_real(ctx, pkt->l4_off);
		stored = index ? bpf_map_lookup_elem(&xlb_reals, &index) : 0;
		if (stored && stored->family) {
			weir_count(&xlb_counters, WEIR_XLB_C_QUIC_ROUTED, len);
			goto send;
		}
	}
	if (!(vip.flags & WEIR_XLB_VIP_F_LRU_BYPASS) && !syn) {
		known = bpf_map_lookup_elem(&xlb_flows, &flow);
		weir_count(&xlb_counters, known ? WEIR_XLB_C_LRU_HIT : WEIR_XLB_C_LRU_MISS, len);
	}
	index = known ? known->real : 0;
	stored = index ? bpf_map_lookup_elem(&xlb_reals, &index) : 0;
	if (!stored || !stored->family) {
		/* New, or its real left: the client's source route, else the ring. */
		index = xlb_source_real(&vip, &flow);
		stored = index ? bpf_map_lookup_elem(&xlb_reals, &index) : 0;
		if (stored && stored->family) {
			weir_count(&xlb_counters, WEIR_XLB_C_SOURCE_ROUTED, len);
		} else {
			hash = xlb_flow_hash(&flow, vip.flags);
			hashed = true;
			index = xlb_ring_real(&vip, hash);
			weir_count(&xlb_counters, WEIR_XLB_C_RING, len);
			stored = bpf_map_lookup_elem(&xlb_reals, &index);
		}
		if (!stored || !stored->family)
			return xlb_drop(WEIR_DROP_XLB_NO_REAL, len);
		if (!(vip.flags & WEIR_XLB_VIP_F_LRU_BYPASS)) {
			if (xlb_flood_allows(cfg)) {
				struct weir_xlb_conn conn = { .real = index, .vip = vip.index };

				bpf_map_update_elem(&xlb_flows, &flow, &conn, BPF_ANY);
			} else {
				weir_count(&xlb_counters, WEIR_XLB_C_FLOOD_GUARD, len);
			}
		}
	}
send:
	__builtin_memcpy(&real, stored, sizeof(real));
	weir_count(&xlb_real_stats, index, len);
	if (vip.forwarding == WEIR_XLB_FWD_NAT) {
		if (real.family != pkt->family)
			return xlb_drop(WEIR_DROP_XLB_NO_REAL, len);
		return xlb_nat_forward(ctx, pkt, &real, vip.index);
	}
	/* The outer source's hash is the ring's when the VIP hashes the
	 * whole client (address and port): computed once for a new flow. */
	if (!hashed || (vip.flags & (WEIR_XLB_VIP_F_DPORT_ONLY | WEIR_XLB_VIP_F_NO_SOURCE_PORT)))
		hash = xlb_flow_hash(&flow, 0);
	return xlb_encap(ctx, cfg, &real, vip.forwarding == WEIR_XLB_FWD_GUE, hash, pkt->family == 6);
}

SEC("xdp")
int weir_xlb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct weir_xlb_config *cfg;
	const struct weir_xlb_vip *vip;
	struct weir_pkt pkt;
	__u64 len = data_end - data;
	__u32 l4_fixed;
	int verdict;

	if (xlb_parse(data, data_end, &pkt) != WEIR_DROP_NONE) {
		weir_count(&xlb_counters, WEIR_XLB_C_INVALID, len);
		return XDP_PASS;
	}
	if (!pkt.family || pkt.l3_off != ETH_HLEN)
		goto pass;
	if (pkt.is_fragment)
		return xlb_drop(WEIR_DROP_XLB_FRAGMENT, len);
	if (pkt.ip_options)
		return xlb_drop(WEIR_DROP_XLB_IP_OPTIONS, len);
	if (pkt.has_l4 && xlb_is_too_big(&pkt)) {
		verdict = xlb_icmp_too_big(ctx, &pkt);
		if (verdict != XDP_PASS)
			return verdict;
		goto pass;
	}
	if (!pkt.has_l4 || (pkt.l4_proto != IPPROTO_TCP && pkt.l4_proto != IPPROTO_UDP))
		goto pass;

	/* Its port's VIP, else the any-port one, looked up only when some VIP
	 * takes any port: most packets that are for no VIP cost one hash
	 * lookup, not two (docs/lb.md, "Cost"). */
	vip = xlb_vip_at(pkt.dst, pkt.dport, pkt.l4_proto, pkt.family);
	cfg = xlb_config_get();
	if (!vip) {
		if (!cfg || cfg->any_port_vips)
			vip = xlb_vip_at(pkt.dst, 0, pkt.l4_proto, pkt.family);
	}
	l4_fixed = pkt.l4_off == (pkt.family == 4 ? XLB_L4_OFF4 : XLB_L4_OFF6);
	if (vip) {
		if (!l4_fixed)
			return xlb_drop(WEIR_DROP_XLB_IP_OPTIONS, len);
		return xlb_forward(ctx, &pkt, vip, cfg);
	}
	if (cfg && cfg->nat_enabled && l4_fixed) {
		verdict = xlb_nat_reply(ctx, &pkt);
		if (verdict != XDP_PASS)
			return verdict;
	}
pass:
	weir_count(&xlb_counters, WEIR_XLB_C_PASSED, len);
	return XDP_PASS;
}

/* The agent's health probes, out of the load balancer's interface. */
SEC("tcx/egress")
int weir_xlb_probe(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	if (!xlb_probe_mark || (mark & XLB_PROBE_MARK_MASK) != xlb_probe_mark)
		return TCX_NEXT;
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
		return TCX_NEXT;
	return xlb_probe_encap(skb, mark, skb->protocol == bpf_htons(ETH_P_IPV6));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
