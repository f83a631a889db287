/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * On a real server: strips what the XDP load balancer put in front of the
 * client's packet (IPIP 4in4, 6in6, 4in6; GUE to port 6080 over either),
 * so the stack sees the client's packet to the VIP — which the real holds
 * on a local interface — and answers the client directly, from the VIP.
 * At tc ingress, because neither the ipip nor the fou module is needed.
 */
#ifndef WEIR_LIB_XLB_DECAP_H
#define WEIR_LIB_XLB_DECAP_H

#include "common.h"
#include "parse.h"
#include "traffic.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_counter);
} xlb_decapsulated SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct weir_counter);
} xlb_decap_drops SEC(".maps");

/* How many outer bytes follow the Ethernet header, and the inner family
 * (4 or 6); 0 when this is not a packet the load balancer encapsulated. */
static __always_inline __u32 xlb_outer_len(struct __sk_buff *skb, const struct weir_pkt *pkt, __u8 *inner)
{
	__u8 version = 0;

	switch (pkt->l4_proto) {
	case 4: /* IPPROTO_IPIP */
		*inner = 4;
		return pkt->l4_off - ETH_HLEN;
	case 41: /* IPPROTO_IPV6 */
		*inner = 6;
		return pkt->l4_off - ETH_HLEN;
	case IPPROTO_UDP:
		if (!pkt->has_l4 || pkt->dport != bpf_htons(WEIR_XLB_GUE_PORT))
			return 0;
		if (bpf_skb_load_bytes(skb, pkt->l4_off + sizeof(struct udphdr), &version, 1))
			return 0;
		*inner = version >> 4;
		if (*inner != 4 && *inner != 6)
			return 0;
		return pkt->l4_off + sizeof(struct udphdr) - ETH_HLEN;
	default:
		return 0;
	}
}

__noinline int xlb_decap(struct __sk_buff *skb, __u32 outer_len, __u32 outer_family, __u32 inner_family)
{
	__be16 proto = bpf_htons(ETH_P_IP);

	if (!skb)
		return TC_ACT_OK;
	if (outer_family == inner_family)
		return bpf_skb_adjust_room(skb, -(__s32)outer_len, BPF_ADJ_ROOM_MAC, 0) ? -1 : 0;
	if (outer_family != 6 || inner_family != 4 || outer_len < 20)
		return -1;
	/* 4in6: turning the skb into IPv4 takes 20 bytes of the outer IPv6
	 * header (and works on every kernel, unlike the adjust_room decap
	 * flags of 6.3); the rest of the outer headers go after. */
	if (bpf_skb_change_proto(skb, proto, 0))
		return -1;
	if (bpf_skb_adjust_room(skb, -(__s32)(outer_len - 20), BPF_ADJ_ROOM_MAC, 0))
		return -1;
	return bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto), 0) ? -1 : 0;
}

#endif
