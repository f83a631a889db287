/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing shared by every hook (XDP and tc pass raw data pointers).
 *
 * Contract: weir_parse() either fills every field of struct weir_pkt that
 * lies inside the packet and returns WEIR_DROP_NONE, or returns the reason the
 * packet is invalid. A field is never read past data_end: a truncated header
 * is an error, never a short read. Non-IP ethertypes are valid and parse no
 * further than the Ethernet (and VLAN) header.
 */
#ifndef WEIR_LIB_PARSE_H
#define WEIR_LIB_PARSE_H

#include "common.h"

#define WEIR_MAX_VLAN_TAGS 2
#define WEIR_MAX_IPV6_EXT_HEADERS 6

struct weir_pkt {
	__u16 eth_proto;   /* host order, after any VLAN tags */
	__u16 vlan_id;     /* outermost tag's VID, 0 when untagged */
	__u8 l4_proto;     /* IPPROTO_*, 0 for non-IP */
	__u8 is_fragment;  /* IPv4 MF/offset or an IPv6 fragment header */
	__u8 is_later_fragment; /* a fragment other than the first: no L4 header */
	__u8 family;       /* 4 or 6 for IP, else 0 */
	__u16 l3_off;      /* from the start of the packet */
	__u16 l4_off;      /* valid when has_l4 */
	__u8 has_l4;       /* the transport header is present and whole */
	__u8 ttl;          /* TTL or hop limit */
	__u8 ip_options;   /* IPv4 header longer than 20 bytes */
	__u8 tcp_flags;
	__u8 icmp_type, icmp_code;
	__be16 sport, dport; /* TCP and UDP only */
	__be32 src[4], dst[4]; /* IPv4 in [0], the rest zero */
};

struct vlan_hdr_weir {
	__be16 tci;
	__be16 encapsulated_proto;
};

static __always_inline enum weir_drop_reason
weir_parse_ipv4(void *data, void *data_end, struct weir_pkt *pkt)
{
	struct iphdr *ip = data + pkt->l3_off;
	__u32 ihl_bytes;

	if ((void *)(ip + 1) > data_end)
		return WEIR_DROP_TRUNCATED;
	ihl_bytes = ip->ihl * 4;
	if (ip->version != 4 || ihl_bytes < sizeof(*ip) ||
	    bpf_ntohs(ip->tot_len) < ihl_bytes)
		return WEIR_DROP_BAD_IPV4_HEADER;
	if (data + pkt->l3_off + ihl_bytes > data_end)
		return WEIR_DROP_TRUNCATED;
	pkt->l4_proto = ip->protocol;
	pkt->l4_off = pkt->l3_off + ihl_bytes;
	pkt->family = 4;
	pkt->ttl = ip->ttl;
	pkt->ip_options = ihl_bytes > sizeof(*ip);
	pkt->src[0] = ip->saddr;
	pkt->dst[0] = ip->daddr;
	pkt->is_fragment = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
	pkt->is_later_fragment = (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
	return WEIR_DROP_NONE;
}

static __always_inline enum weir_drop_reason
weir_parse_ipv6(void *data, void *data_end, struct weir_pkt *pkt)
{
	struct ipv6hdr *ip6 = data + pkt->l3_off;
	__u32 off;
	__u8 nexthdr;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return WEIR_DROP_TRUNCATED;
	if (ip6->version != 6)
		return WEIR_DROP_BAD_IPV6_HEADER;
	pkt->family = 6;
	pkt->ttl = ip6->hop_limit;
	__builtin_memcpy(pkt->src, &ip6->saddr, sizeof(pkt->src));
	__builtin_memcpy(pkt->dst, &ip6->daddr, sizeof(pkt->dst));
	nexthdr = ip6->nexthdr;
	off = pkt->l3_off + sizeof(*ip6);

	/* Follow the extension header chain to the transport header. */
#pragma unroll
	for (i = 0; i < WEIR_MAX_IPV6_EXT_HEADERS; i++) {
		struct ipv6_opt_hdr *opt = data + off;

		switch (nexthdr) {
		case IPV6_NEXTHDR_HOP:
		case IPV6_NEXTHDR_ROUTING:
		case IPV6_NEXTHDR_DEST:
			if ((void *)(opt + 1) > data_end)
				return WEIR_DROP_TRUNCATED;
			nexthdr = opt->nexthdr;
			off += (opt->hdrlen + 1) * 8;
			break;
		case IPV6_NEXTHDR_AUTH:
			if ((void *)(opt + 1) > data_end)
				return WEIR_DROP_TRUNCATED;
			nexthdr = opt->nexthdr;
			off += (opt->hdrlen + 2) * 4;
			break;
		case IPV6_NEXTHDR_FRAGMENT: {
			struct frag_hdr *frag = data + off;

			if ((void *)(frag + 1) > data_end)
				return WEIR_DROP_TRUNCATED;
			pkt->is_fragment = 1;
			pkt->is_later_fragment =
				(frag->frag_off & bpf_htons(0xFFF8)) != 0;
			nexthdr = frag->nexthdr;
			off += sizeof(*frag);
			break;
		}
		default:
			goto done;
		}
		if (off > 0xFFFF)
			return WEIR_DROP_BAD_IPV6_HEADER;
	}
	return WEIR_DROP_TOO_MANY_IPV6_EXT_HEADERS;
done:
	if (data + off > data_end)
		return WEIR_DROP_TRUNCATED;
	pkt->l4_proto = nexthdr;
	pkt->l4_off = off;
	return WEIR_DROP_NONE;
}

/* The transport header must be whole for a first fragment or unfragmented
 * packet; a later fragment carries none. */
static __always_inline enum weir_drop_reason
weir_parse_l4(void *data, void *data_end, struct weir_pkt *pkt)
{
	void *l4 = data + pkt->l4_off;
	__u32 need;

	if (pkt->is_later_fragment)
		return WEIR_DROP_NONE;
	switch (pkt->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return WEIR_DROP_TRUNCATED;
		need = tcp->doff * 4;
		if (need < sizeof(*tcp))
			return WEIR_DROP_TRUNCATED;
		pkt->sport = tcp->source;
		pkt->dport = tcp->dest;
		/* The flags byte follows the data offset byte. */
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return WEIR_DROP_TRUNCATED;
		pkt->sport = udp->source;
		pkt->dport = udp->dest;
		need = sizeof(*udp);
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *icmp = l4;

		need = 4; /* type, code, checksum */
		if (l4 + need > data_end)
			return WEIR_DROP_TRUNCATED;
		pkt->icmp_type = icmp[0];
		pkt->icmp_code = icmp[1];
		break;
	}
	default:
		return WEIR_DROP_NONE;
	}
	if (l4 + need > data_end)
		return WEIR_DROP_TRUNCATED;
	pkt->has_l4 = 1;
	return WEIR_DROP_NONE;
}

static __always_inline enum weir_drop_reason
weir_parse(void *data, void *data_end, struct weir_pkt *pkt)
{
	struct ethhdr *eth = data;
	enum weir_drop_reason err;
	__u16 proto;
	__u32 off;
	int i;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if ((void *)(eth + 1) > data_end)
		return WEIR_DROP_TRUNCATED;
	proto = bpf_ntohs(eth->h_proto);
	off = sizeof(*eth);

#pragma unroll
	for (i = 0; i <= WEIR_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr_weir *vlan = data + off;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if (i == WEIR_MAX_VLAN_TAGS)
			return WEIR_DROP_TOO_MANY_VLAN_TAGS;
		if ((void *)(vlan + 1) > data_end)
			return WEIR_DROP_TRUNCATED;
		if (i == 0)
			pkt->vlan_id = bpf_ntohs(vlan->tci) & 0x0FFF;
		proto = bpf_ntohs(vlan->encapsulated_proto);
		off += sizeof(*vlan);
	}
	pkt->eth_proto = proto;
	pkt->l3_off = off;

	switch (proto) {
	case ETH_P_IP:
		err = weir_parse_ipv4(data, data_end, pkt);
		break;
	case ETH_P_IPV6:
		err = weir_parse_ipv6(data, data_end, pkt);
		break;
	default:
		return WEIR_DROP_NONE;
	}
	if (err != WEIR_DROP_NONE)
		return err;
	return weir_parse_l4(data, data_end, pkt);
}

/* How much of an skb's head the parser reads at most. */
#define WEIR_SKB_HEADERS 128

#define WEIR_TCP_SYN 0x02
#define WEIR_TCP_ACK 0x10

/* Is this the packet that opens a flow: any UDP datagram, a TCP SYN (not
 * a SYN-ACK, which answers a flow someone else opened)? */
static __always_inline bool weir_opens_flow(__u8 l4_proto, __u8 tcp_flags)
{
	return l4_proto != IPPROTO_TCP || ((tcp_flags & WEIR_TCP_SYN) && !(tcp_flags & WEIR_TCP_ACK));
}

/*
 * Makes the headers of an skb directly readable: only the linear part is
 * visible to direct packet access. (The pull is unconditional: comparing
 * the linear length first trips the verifier on how clang spills the
 * context. For an skb that is not cloned it copies nothing; a clone's head
 * it copies: weir_skb_parse() pulls only when the parse needs it.)
 */
static __always_inline void weir_skb_headers(struct __sk_buff *skb)
{
	bpf_skb_pull_data(skb, skb->len < WEIR_SKB_HEADERS ? skb->len : WEIR_SKB_HEADERS);
}

/*
 * weir_parse() on an skb, pulling its headers into the linear part only
 * when they are not all there. Every TCP segment a local socket sends is a
 * clone whose linear part holds exactly its headers, its payload in pages:
 * a pull past the headers copies its head (pskb_expand_head) and its first
 * payload bytes, on every segment a pod sends. What follows the parse
 * reads payload with bpf_skb_load_bytes, which needs no pull.
 */
static __always_inline enum weir_drop_reason weir_skb_parse(struct __sk_buff *skb, struct weir_pkt *pkt)
{
	enum weir_drop_reason invalid;

	invalid = weir_parse((void *)(long)skb->data, (void *)(long)skb->data_end, pkt);
	if (invalid != WEIR_DROP_TRUNCATED)
		return invalid;
	weir_skb_headers(skb);
	return weir_parse((void *)(long)skb->data, (void *)(long)skb->data_end, pkt);
}

#endif
