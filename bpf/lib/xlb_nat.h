/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * NAT mode, for reals that cannot decapsulate: the client's packet goes to
 * the real with its destination rewritten (address, and port when the
 * real names one); the real's reply, routed back through the load
 * balancer, gets the VIP back as its source. The (real, client) -> VIP
 * entry is written by the forward path and refreshed by both.
 *
 * VIP packets reach here without IPv4 options or IPv6 extension headers
 * (xlb.bpf.c drops them), so the transport header is at a fixed offset.
 */
#ifndef WEIR_LIB_XLB_NAT_H
#define WEIR_LIB_XLB_NAT_H

#include "common.h"
#include "parse.h"
#include "xlb_maps.h"
#include "xlb_encap.h"

#define XLB_L4_OFF4 (ETH_HLEN + 20)
#define XLB_L4_OFF6 (ETH_HLEN + 40)

/* Adds the change of one 32-bit word to a running checksum delta (RFC 1624). */
static __always_inline __u64 xlb_csum_word(__u64 delta, __u32 from, __u32 to)
{
	return delta + (~from & 0xFFFF) + ((~from) >> 16) + (to & 0xFFFF) + (to >> 16);
}

static __always_inline __u16 xlb_csum_apply(__u16 check, __u64 delta)
{
	__u64 sum = (__u16)~check + delta;

	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * Rewrites the source (to_dst == 0) or destination address and port of a
 * TCP or UDP packet, checksums included, and sets the MACs for XDP_TX
 * (next hop Route rewrites them after: xlb_leave).
 * Returns 0, or -1 when the packet is shorter than its headers claim.
 */
static __always_inline int xlb_nat_rewrite(struct xdp_md *ctx, __u8 family, __u8 proto, int to_dst,
					   const __u32 *addr, __be16 port)
{
	const struct weir_xlb_config *cfg = xlb_config_get();
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 *l4_check, *l4_port;
	struct ethhdr orig;
	__u64 delta = 0;
	void *l4;
	__u32 *old;
	int i;

	if (!cfg || data + sizeof(orig) > data_end)
		return -1;
	__builtin_memcpy(&orig, data, sizeof(orig));
	/* Every pointer is checked right where it is made, and nothing is
	 * written before all of them are: older verifiers do not carry a
	 * branch's bounds over to code after it. */
	if (family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > data_end)
			return -1;
		l4 = (void *)(ip + 1);
		l4_port = l4 + (to_dst ? 2 : 0);
		l4_check = l4 + (proto == IPPROTO_TCP ? 16 : 6);
		if ((void *)(l4_port + 1) > data_end || (void *)(l4_check + 1) > data_end)
			return -1;
		old = to_dst ? &ip->daddr : &ip->saddr;
		delta = xlb_csum_word(0, *old, addr[0]);
		ip->check = xlb_csum_apply(ip->check, delta);
		*old = addr[0];
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		l4 = (void *)(ip6 + 1);
		l4_port = l4 + (to_dst ? 2 : 0);
		l4_check = l4 + (proto == IPPROTO_TCP ? 16 : 6);
		if ((void *)(l4_port + 1) > data_end || (void *)(l4_check + 1) > data_end)
			return -1;
		old = to_dst ? ip6->daddr.in6_u.u6_addr32 : ip6->saddr.in6_u.u6_addr32;
#pragma unroll
		for (i = 0; i < 4; i++) {
			delta = xlb_csum_word(delta, old[i], addr[i]);
			old[i] = addr[i];
		}
	}
	delta = xlb_csum_word(delta, *l4_port, port);
	*l4_port = port;
	/* An IPv4 UDP checksum of zero means "none": keep it so. */
	if (proto == IPPROTO_TCP || *l4_check || family == 6) {
		__u16 check = xlb_csum_apply(*l4_check, delta);

		*l4_check = (proto == IPPROTO_UDP && !check) ? 0xFFFF : check;
	}
	xlb_macs(data, &orig, cfg, family == 4 ? ETH_P_IP : ETH_P_IPV6);
	return 0;
}

/* The client's packet to `real`, remembering the way back. */
__noinline int xlb_nat_forward(struct xdp_md *ctx, const struct weir_pkt *pkt, const struct weir_xlb_real *real,
			       __u32 vip_index)
{
	struct weir_xlb_nat_key key = {};
	struct weir_xlb_nat entry = {};
	__be16 port;

	if (!ctx || !pkt || !real)
		return XDP_ABORTED;
	port = real->port ? real->port : pkt->dport;
	__builtin_memcpy(key.real, real->addr, sizeof(key.real));
	__builtin_memcpy(key.client, pkt->src, sizeof(key.client));
	key.real_port = port;
	key.client_port = pkt->sport;
	key.proto = pkt->l4_proto;
	key.family = pkt->family;
	__builtin_memcpy(entry.vip, pkt->dst, sizeof(entry.vip));
	entry.vip_port = pkt->dport;
	entry.vip_index = vip_index;
	bpf_map_update_elem(&xlb_nat, &key, &entry, BPF_ANY);
	if (xlb_nat_rewrite(ctx, pkt->family, pkt->l4_proto, 1, real->addr, port))
		return XDP_PASS;
	return xlb_leave(ctx, xlb_config_get());
}

/* A NAT real's reply, back from the VIP; XDP_PASS when it is none. */
__noinline int xlb_nat_reply(struct xdp_md *ctx, const struct weir_pkt *pkt)
{
	struct weir_xlb_nat_key key = {};
	struct weir_xlb_nat entry;
	const struct weir_xlb_nat *found;
	__u64 len;

	if (!ctx || !pkt)
		return XDP_PASS;
	len = ctx->data_end - ctx->data;
	__builtin_memcpy(key.real, pkt->src, sizeof(key.real));
	__builtin_memcpy(key.client, pkt->dst, sizeof(key.client));
	key.real_port = pkt->sport;
	key.client_port = pkt->dport;
	key.proto = pkt->l4_proto;
	key.family = pkt->family;
	found = bpf_map_lookup_elem(&xlb_nat, &key);
	if (!found)
		return XDP_PASS;
	__builtin_memcpy(&entry, found, sizeof(entry));
	if (xlb_nat_rewrite(ctx, pkt->family, pkt->l4_proto, 0, entry.vip, entry.vip_port))
		return XDP_PASS;
	weir_count(&xlb_counters, WEIR_XLB_C_NAT_REPLY, len);
	weir_count(&xlb_vip_stats, entry.vip_index, len);
	return xlb_leave(ctx, xlb_config_get());
}

#endif
