/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Health probes through the same encapsulation as the traffic (Katran's
 * healthchecking program, in the same object): the agent connects a TCP
 * or UDP socket to the VIP with a socket mark naming one real; on the way
 * out of the load balancer's interface each packet the probe sends is put
 * in IPIP or GUE to that real (whatever its L4: the inner checksum, partial
 * or not, stays the socket's), which decapsulates it like any client's
 * packet and answers from the VIP straight to the load balancer's own
 * address — so a probe passes only if the real serves the VIP as clients
 * reach it.
 *
 * Mark: xlb_probe_mark | (GUE ? 1 << 16 : 0) | real index. The outer
 * source is the probe's own source, the load balancer's address.
 */
#ifndef WEIR_LIB_XLB_PROBE_H
#define WEIR_LIB_XLB_PROBE_H

#include "common.h"
#include "parse.h"
#include "xlb_maps.h"
#include "xlb_encap.h"

/* Set by the agent before load (weir-bpf), so no mark is written twice. */
const volatile __u32 xlb_probe_mark = 0;
#define XLB_PROBE_MARK_MASK 0xFFFE0000u
#define XLB_PROBE_GUE (1u << 16)
#define XLB_PROBE_REAL_MASK 0xFFFFu

__noinline int xlb_probe_encap(struct __sk_buff *skb, __u32 mark, __u32 inner_v6)
{
	struct weir_xlb_real real;
	const struct weir_xlb_real *stored;
	__u32 index = mark & XLB_PROBE_REAL_MASK;
	__u32 gue = mark & XLB_PROBE_GUE;
	__u32 udp_len = gue ? sizeof(struct udphdr) : 0;
	__u32 inner_len;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | (gue ? BPF_F_ADJ_ROOM_ENCAP_L4_UDP : 0);
	struct udphdr udp = {};

	if (!skb)
		return TC_ACT_OK;
	inner_len = skb->len - ETH_HLEN;
	stored = bpf_map_lookup_elem(&xlb_reals, &index);
	if (!stored || !stored->family)
		return TC_ACT_SHOT;
	__builtin_memcpy(&real, stored, sizeof(real));
	if ((real.family == 6) != (inner_v6 != 0))
		return TC_ACT_SHOT; /* 4in6 probes: not supported; the agent sends none */
	udp.source = xlb_gue_source_port(bpf_get_hash_recalc(skb));
	udp.dest = bpf_htons(WEIR_XLB_GUE_PORT);
	udp.len = bpf_htons(inner_len + sizeof(udp));
	if (real.family == 4) {
		struct iphdr outer = {};
		__be32 saddr;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &saddr, sizeof(saddr)))
			return TC_ACT_SHOT;
		outer.version = 4;
		outer.ihl = 5;
		outer.tot_len = bpf_htons(inner_len + sizeof(outer) + udp_len);
		outer.ttl = XLB_TTL;
		outer.protocol = gue ? IPPROTO_UDP : IPPROTO_IPIP_WEIR;
		outer.saddr = saddr;
		outer.daddr = real.addr[0];
		outer.check = xlb_ipv4_csum(&outer);
		if (bpf_skb_adjust_room(skb, sizeof(outer) + udp_len, BPF_ADJ_ROOM_MAC,
					flags | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
			return TC_ACT_SHOT;
		if (gue && bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(outer), &udp, sizeof(udp), 0))
			return TC_ACT_SHOT;
	} else {
		struct ipv6hdr outer = {};

		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), &outer.saddr,
				       sizeof(outer.saddr)))
			return TC_ACT_SHOT;
		outer.version = 6;
		outer.payload_len = bpf_htons(inner_len + udp_len);
		outer.nexthdr = gue ? IPPROTO_UDP : IPPROTO_IPV6_WEIR;
		outer.hop_limit = XLB_TTL;
		__builtin_memcpy(&outer.daddr, real.addr, sizeof(outer.daddr));
		if (bpf_skb_adjust_room(skb, sizeof(outer) + udp_len, BPF_ADJ_ROOM_MAC,
					flags | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
			return TC_ACT_SHOT;
		if (gue && bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(outer), &udp, sizeof(udp), 0))
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

#endif
