/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The load balancer's parser: the common packet (untagged Ethernet, IPv4
 * without options or fragmentation, or IPv6 without extension headers,
 * carrying a whole TCP or UDP header) read in one straight pass; anything
 * else goes to the datapath's full parser (parse.h), which walks VLAN tags
 * and extension headers. Both leave the same struct weir_pkt for the
 * common packet, so the load balancer's rules do not depend on which one
 * read it; the straight pass saves the full parser's generality on every
 * packet (up to 15 ns of an LRU hit; docs/lb.md, "Cost").
 */
#ifndef WEIR_LIB_XLB_PARSE_H
#define WEIR_LIB_XLB_PARSE_H

#include "common.h"
#include "parse.h"

static __always_inline enum weir_drop_reason xlb_parse(void *data, void *data_end, struct weir_pkt *pkt)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct tcphdr *tcp;
	__u32 l4_off;
	__u8 proto, tcp_flags = 0;

	if ((void *)(eth + 1) > data_end)
		goto full;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		if ((void *)(ip + 1) > data_end)
			goto full;
		/* Version 4, a 20-byte header; not a fragment. */
		if (*(__u8 *)ip != 0x45 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
		    bpf_ntohs(ip->tot_len) < sizeof(*ip))
			goto full;
		proto = ip->protocol;
		l4_off = ETH_HLEN + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		if ((void *)(ip6 + 1) > data_end)
			goto full;
		if ((*(__u8 *)ip6 & 0xF0) != 0x60)
			goto full;
		proto = ip6->nexthdr;
		l4_off = ETH_HLEN + sizeof(*ip6);
	} else {
		goto full;
	}
	tcp = data + l4_off;
	if (proto == IPPROTO_TCP) {
		if ((void *)(tcp + 1) > data_end || tcp->doff < 5 || (void *)tcp + tcp->doff * 4 > data_end)
			goto full;
		/* Read under this bound: 6.1's verifier loses which branch was
		 * taken through the spilled protocol, and would refuse a read
		 * guarded by a second test of it. */
		tcp_flags = ((__u8 *)tcp)[13];
	} else if (proto == IPPROTO_UDP) {
		if ((void *)tcp + sizeof(struct udphdr) > data_end)
			goto full;
	} else {
		goto full;
	}

	__builtin_memset(pkt, 0, sizeof(*pkt));
	pkt->l3_off = ETH_HLEN;
	pkt->l4_off = l4_off;
	pkt->l4_proto = proto;
	pkt->has_l4 = 1;
	/* The ports lead both headers. */
	pkt->sport = tcp->source;
	pkt->dport = tcp->dest;
	pkt->tcp_flags = tcp_flags;
	if (l4_off == ETH_HLEN + sizeof(*ip)) {
		pkt->eth_proto = ETH_P_IP;
		pkt->family = 4;
		pkt->ttl = ip->ttl;
		pkt->src[0] = ip->saddr;
		pkt->dst[0] = ip->daddr;
	} else {
		pkt->eth_proto = ETH_P_IPV6;
		pkt->family = 6;
		pkt->ttl = ip6->hop_limit;
		__builtin_memcpy(pkt->src, &ip6->saddr, sizeof(pkt->src));
		__builtin_memcpy(pkt->dst, &ip6->daddr, sizeof(pkt->dst));
	}
	return WEIR_DROP_NONE;
full:
	return weir_parse(data, data_end, pkt);
}

#endif
