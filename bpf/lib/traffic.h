/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Traffic accounting: classify a parsed packet and bump per-CPU counters. */
#ifndef WEIR_LIB_TRAFFIC_H
#define WEIR_LIB_TRAFFIC_H

#include "common.h"
#include "parse.h"

static __always_inline enum weir_traffic_class
weir_classify(const struct weir_pkt *pkt)
{
	int v6 = pkt->eth_proto == ETH_P_IPV6;

	switch (pkt->eth_proto) {
	case ETH_P_IP:
	case ETH_P_IPV6:
		break;
	case ETH_P_ARP:
		return WEIR_TRAFFIC_ARP;
	default:
		return WEIR_TRAFFIC_OTHER;
	}
	if (pkt->is_later_fragment)
		return v6 ? WEIR_TRAFFIC_IPV6_OTHER : WEIR_TRAFFIC_IPV4_OTHER;
	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
		return v6 ? WEIR_TRAFFIC_IPV6_TCP : WEIR_TRAFFIC_IPV4_TCP;
	case IPPROTO_UDP:
		return v6 ? WEIR_TRAFFIC_IPV6_UDP : WEIR_TRAFFIC_IPV4_UDP;
	case IPPROTO_ICMP:
		return v6 ? WEIR_TRAFFIC_IPV6_OTHER : WEIR_TRAFFIC_IPV4_ICMP;
	case IPPROTO_ICMPV6:
		return v6 ? WEIR_TRAFFIC_IPV6_ICMP : WEIR_TRAFFIC_IPV4_OTHER;
	default:
		return v6 ? WEIR_TRAFFIC_IPV6_OTHER : WEIR_TRAFFIC_IPV4_OTHER;
	}
}

/* Adds one packet of `len` bytes to slot `idx` of a per-CPU counter array. */
static __always_inline void weir_count(void *map, __u32 idx, __u64 len)
{
	struct weir_counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif
