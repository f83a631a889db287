/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Direct server return: the client's packet, whole, inside an outer IPv4
 * or IPv6 header (IPIP: 4in4, 6in6, 4in6) or outer IP + UDP (GUE, variant
 * 1: no GUE header, the inner IP version says what follows), sent where
 * spec.nextHop says (xlb_nexthop.h). The outer source varies per client
 * (its low bits are the client's hash) so the real's NIC spreads flows
 * over its receive queues.
 */
#ifndef WEIR_LIB_XLB_ENCAP_H
#define WEIR_LIB_XLB_ENCAP_H

#include "common.h"
#include "xlb_maps.h"
#include "xlb_nexthop.h"

#define XLB_TTL 64
#define IPPROTO_IPIP_WEIR 4
#define IPPROTO_IPV6_WEIR 41

/* Ethernet for XDP_TX: to the configured gateway, else back to the sender
 * (one-armed: the router in front of the load balancer). */
static __always_inline void xlb_macs(struct ethhdr *eth, const struct ethhdr *orig,
				     const struct weir_xlb_config *cfg, __u16 proto)
{
	const __u8 *gw = cfg->gateway_mac;

	if (gw[0] | gw[1] | gw[2] | gw[3] | gw[4] | gw[5])
		__builtin_memcpy(eth->h_dest, gw, 6);
	else
		__builtin_memcpy(eth->h_dest, orig->h_source, 6);
	__builtin_memcpy(eth->h_source, orig->h_dest, 6);
	eth->h_proto = bpf_htons(proto);
}

static __always_inline __u16 xlb_ipv4_csum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += word[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline __be16 xlb_gue_source_port(__u32 rss)
{
	/* In the ephemeral half, as a tunnel's source port should be. */
	return bpf_htons(0x8000 | (rss & 0x7FFF));
}

/*
 * Puts `real`'s outer headers in front of the inner IP packet (all of the
 * frame after Ethernet) and returns the verdict that sends it (xlb_leave),
 * or the drop. `real` points at a copy on the caller's stack; `cfg` is the
 * configuration the caller looked up (one lookup per packet). Inlined into
 * both callers (a packet for a VIP, an ICMP too-big), as the hot path
 * should have no calls but the kernel's helpers.
 */
static __always_inline int xlb_encap(struct xdp_md *ctx, const struct weir_xlb_config *cfg,
				     const struct weir_xlb_real *real, __u32 gue, __u32 rss, __u32 inner_v6)
{
	__u32 udp_len = gue ? sizeof(struct udphdr) : 0;
	void *data, *data_end;
	struct ethhdr orig;
	struct udphdr *udp;
	__u32 inner_len;

	if (!ctx || !real || !cfg)
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(orig) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&orig, data, sizeof(orig));
	inner_len = (data_end - data - ETH_HLEN) & 0xFFFF;

	if (real->family == 4) {
		struct iphdr *ip;

		if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(*ip) + udp_len)))
			return xlb_drop(WEIR_DROP_XLB_ENCAP_FAILED, inner_len);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		ip = data + ETH_HLEN;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return xlb_drop(WEIR_DROP_XLB_ENCAP_FAILED, inner_len);
		/* Written in place: no header built on the stack and copied. */
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(inner_len + sizeof(*ip) + udp_len);
		ip->id = 0;
		ip->frag_off = 0;
		ip->ttl = XLB_TTL;
		ip->protocol = gue ? IPPROTO_UDP : IPPROTO_IPIP_WEIR;
		ip->check = 0;
		ip->saddr = (cfg->encap_src4 & bpf_htonl(0xFFFF0000)) | bpf_htonl(rss & 0xFFFF);
		ip->daddr = real->addr[0];
		ip->check = xlb_ipv4_csum(ip);
		xlb_macs(data, &orig, cfg, ETH_P_IP);
	} else {
		struct ipv6hdr *ip6;

		if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(*ip6) + udp_len)))
			return xlb_drop(WEIR_DROP_XLB_ENCAP_FAILED, inner_len);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		ip6 = data + ETH_HLEN;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return xlb_drop(WEIR_DROP_XLB_ENCAP_FAILED, inner_len);
		/* Version 6, traffic class and flow label 0, in one word. */
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(inner_len + udp_len);
		ip6->nexthdr = gue ? IPPROTO_UDP : (inner_v6 ? IPPROTO_IPV6_WEIR : IPPROTO_IPIP_WEIR);
		ip6->hop_limit = XLB_TTL;
		ip6->saddr.in6_u.u6_addr32[0] = cfg->encap_src6[0];
		ip6->saddr.in6_u.u6_addr32[1] = cfg->encap_src6[1];
		ip6->saddr.in6_u.u6_addr32[2] = cfg->encap_src6[2];
		ip6->saddr.in6_u.u6_addr32[3] = rss;
		__builtin_memcpy(&ip6->daddr, real->addr, sizeof(ip6->daddr));
		xlb_macs(data, &orig, cfg, ETH_P_IPV6);
	}
	if (gue) {
		udp->source = xlb_gue_source_port(rss);
		udp->dest = bpf_htons(WEIR_XLB_GUE_PORT);
		udp->len = bpf_htons(inner_len + sizeof(*udp));
		/* Zero: no checksum (RFC 6935 allows it for tunnels over IPv6);
		 * the inner packet carries its own. */
		udp->check = 0;
	}
	return xlb_leave(ctx, cfg);
}

#endif
