/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Traffic accounting shared by kernel and userspace.
 *
 * Traffic classes index the per-CPU counter arrays of the node datapath.
 * Same X(NAME, CODE, "description") convention as drop_reasons.h.
 */
#ifndef WEIR_API_TRAFFIC_H
#define WEIR_API_TRAFFIC_H

#define WEIR_TRAFFIC_CLASSES(X)                                         \
	X(IPV4_TCP, 0, "IPv4 TCP")                                       \
	X(IPV4_UDP, 1, "IPv4 UDP")                                       \
	X(IPV4_ICMP, 2, "IPv4 ICMP")                                     \
	X(IPV4_OTHER, 3, "IPv4, other protocol or non-first fragment")   \
	X(IPV6_TCP, 4, "IPv6 TCP")                                       \
	X(IPV6_UDP, 5, "IPv6 UDP")                                       \
	X(IPV6_ICMP, 6, "IPv6 ICMPv6")                                   \
	X(IPV6_OTHER, 7, "IPv6, other protocol or non-first fragment")   \
	X(ARP, 8, "ARP")                                                 \
	X(OTHER, 9, "other ethertype")                                   \
	X(INVALID, 10, "invalid or truncated; see the invalid-packet counters")

#define WEIR_TRAFFIC_ENUM_ENTRY(name, code, desc) WEIR_TRAFFIC_##name = code,
enum weir_traffic_class {
	WEIR_TRAFFIC_CLASSES(WEIR_TRAFFIC_ENUM_ENTRY)
	WEIR_TRAFFIC_CLASS_MAX,
};
#undef WEIR_TRAFFIC_ENUM_ENTRY

/* Packets and bytes, kept per CPU and summed by userspace. */
struct weir_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
