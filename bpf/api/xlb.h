/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP L4 load balancer's contract (`weir lb`, Katran's design): VIPs
 * keyed by (address, port, protocol), one Maglev ring of
 * WEIR_XLB_RING_SIZE slots per VIP in one big array (VIP index * size +
 * slot), reals in an array (index 0 is "no real"), a per-CPU LRU of
 * connections, NAT mode's reverse table, counters.
 *
 * The flow hash is part of the contract too: crates/weir-lb's `hash`
 * module computes exactly what xlb_hash.h does, so `weir lb simulate` and
 * the fixtures know which ring slot a packet takes.
 */
#ifndef WEIR_API_XLB_H
#define WEIR_API_XLB_H

/* Prime, as Maglev wants, and over 100 times the reals of a VIP. */
#define WEIR_XLB_RING_SIZE 65537
/* The rings are one array of MAX_VIPS * RING_SIZE u32 (16 MiB at 64). */
#define WEIR_XLB_MAX_VIPS 64
#define WEIR_XLB_MAX_REALS 4096
#define WEIR_XLB_MAX_FLOWS 65536
#define WEIR_XLB_MAX_NAT 65536
#define WEIR_XLB_GUE_PORT 6080
#define WEIR_XLB_MAX_SOURCE_ROUTES 16384
/* QUIC: the first 16 bits of a short header's destination connection id
 * are the server id of the real that chose it (0: none). */
#define WEIR_XLB_MAX_QUIC_SERVERS 4096

/* VIP flags: bit numbers (the flag is 1 << code). */
#define WEIR_XLB_VIP_FLAGS(X)                                                            \
	X(NO_SOURCE_PORT, 0, "hash the client address only, not its port")               \
	X(DPORT_ONLY, 1, "hash the destination port only: one real per VIP port")         \
	X(LRU_BYPASS, 2, "no connection table: every packet takes the ring")              \
	X(LOCAL, 3, "deliver to this host's stack instead of forwarding")                   \
	X(SOURCE_ROUTES, 4, "new connections from a routed client prefix go to its real") \
	X(QUIC, 5, "QUIC: a short header's connection id names its real's server id")

#define WEIR_XLB_VIP_FLAG_ENTRY(name, code, desc) WEIR_XLB_VIP_F_##name = 1 << code,
enum weir_xlb_vip_flag {
	WEIR_XLB_VIP_FLAGS(WEIR_XLB_VIP_FLAG_ENTRY)
};
#undef WEIR_XLB_VIP_FLAG_ENTRY

#define WEIR_XLB_FORWARDINGS(X)                                                          \
	X(IPIP, 0, "IP-in-IP to the real (4in4, 6in6 or 4in6); the real answers directly") \
	X(GUE, 1, "IP in UDP (GUE, port 6080) to the real; the real answers directly")   \
	X(NAT, 2, "destination rewritten to the real; replies translated back here")

#define WEIR_XLB_FORWARDING_ENTRY(name, code, desc) WEIR_XLB_FWD_##name = code,
enum weir_xlb_forwarding {
	WEIR_XLB_FORWARDINGS(WEIR_XLB_FORWARDING_ENTRY)
};
#undef WEIR_XLB_FORWARDING_ENTRY

/* Where a forwarded packet's Ethernet header sends it (spec.nextHop). */
#define WEIR_XLB_NEXT_HOPS(X)                                                                 \
	X(SENDER, 0, "back to the sender's MAC, out of the interface it came in (XDP_TX)")      \
	X(GATEWAY, 1, "to the configured gateway MAC, out of the interface it came in (XDP_TX)") \
	X(ROUTE, 2, "the kernel's route and neighbour for the packet as it leaves (XDP_TX or XDP_REDIRECT)")

#define WEIR_XLB_NEXT_HOP_ENTRY(name, code, desc) WEIR_XLB_NEXT_HOP_##name = code,
enum weir_xlb_next_hop {
	WEIR_XLB_NEXT_HOPS(WEIR_XLB_NEXT_HOP_ENTRY)
};
#undef WEIR_XLB_NEXT_HOP_ENTRY

/* Per-CPU counters of the whole program, by index. */
#define WEIR_XLB_COUNTERS(X)                                                     \
	X(LRU_HIT, 0, "a packet found its connection in the LRU")                 \
	X(LRU_MISS, 1, "a packet of no known connection took the ring")           \
	X(RING, 2, "a packet took the ring (SYNs, misses and LRU-bypass VIPs)")   \
	X(PASSED, 3, "not for a VIP: passed to the stack")                        \
	X(LOCAL, 4, "for a local VIP: passed to the stack")                       \
	X(NAT_REPLY, 5, "a NAT real's reply translated back to its VIP")         \
	X(DROPPED, 6, "dropped (the drop map says why)")                         \
	X(INVALID, 7, "malformed: passed to the stack, which judges it")          \
	X(FLOOD_GUARD, 8, "a new connection not remembered: over the per-core rate")  \
	X(ICMP_TOO_BIG, 9, "an ICMP too-big for a VIP's reply, sent on to the real that sent it") \
	X(SOURCE_ROUTED, 10, "a new connection sent to the real its client's prefix is routed to") \
	X(QUIC_ROUTED, 11, "a QUIC short-header packet sent to the real its connection id names") \
	X(ROUTE_REDIRECT, 12, "next hop Route: sent out of another interface than it came in (XDP_REDIRECT)") \
	X(ROUTE_NO_NEIGH, 13, "next hop Route: the next hop's MAC not yet known; passed to the stack, which resolves it and forwards")

#define WEIR_XLB_COUNTER_ENTRY(name, code, desc) WEIR_XLB_C_##name = code,
enum weir_xlb_counter {
	WEIR_XLB_COUNTERS(WEIR_XLB_COUNTER_ENTRY)
	WEIR_XLB_COUNTER_MAX,
};
#undef WEIR_XLB_COUNTER_ENTRY

struct weir_xlb_vip_key {
	__u32 addr[4]; /* IPv4 in addr[0]; network order */
	__u16 port;    /* network order; 0: any port */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* 4 or 6 */
};

struct weir_xlb_vip {
	__u32 index;      /* ring block, counters */
	__u32 flags;      /* WEIR_XLB_VIP_F_* */
	__u32 forwarding; /* enum weir_xlb_forwarding */
	__u32 pad;
};

struct weir_xlb_real {
	__u32 addr[4]; /* network order */
	__u16 port;    /* NAT mode: the destination port (network order); 0 keeps the VIP's */
	__u8 family;   /* 4 or 6; 0: no real */
	__u8 pad;
};

/* A connection: the client's packet as it arrives. */
struct weir_xlb_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct weir_xlb_conn {
	__u32 real; /* index into the reals */
	__u32 vip;  /* index of the VIP, for counting */
};

/* NAT mode: a real's reply (real, client) -> the VIP it answers for. */
struct weir_xlb_nat_key {
	__u32 real[4];
	__u32 client[4];
	__u16 real_port;
	__u16 client_port;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct weir_xlb_nat {
	__u32 vip[4];
	__u16 vip_port;
	__u16 pad;
	__u32 vip_index;
};

struct weir_xlb_config {
	__u8 gateway_mac[6]; /* all zero: answer to the sender's MAC */
	__u16 next_hop;      /* enum weir_xlb_next_hop; ROUTE overrides the MACs */
	__u32 encap_src4;    /* network order; low 16 bits replaced per client */
	__u32 encap_src6[4]; /* network order; last 32 bits replaced per client */
	__u32 nat_enabled;   /* some VIP forwards by NAT: look replies up */
	__u32 flood_limit;   /* LRU inserts per second per core; 0: none at all */
	__u32 any_port_vips; /* some VIP takes any port: a packet's miss looks port 0 up too */
};

/* Source routing: (VIP index, client prefix) -> real index, longest
 * prefix first. prefixlen counts the 32 bits of vip_index too. */
struct weir_xlb_source_key {
	__u32 prefixlen;
	__u32 vip_index;
	__u32 addr[4]; /* IPv4 in addr[0] */
};

/* The flood guard's window on one core. */
struct weir_xlb_flood {
	__u64 window_start_ns;
	__u64 inserts;
};

#endif
