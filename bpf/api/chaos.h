/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Chaos experiments on the pod path: faults between pairs of pod addresses,
 * judged where the sending pod's packet enters the node. Each entry carries
 * its end time, so a fault stops on time even when no agent is left to
 * remove it.
 */
#ifndef WEIR_API_CHAOS_H
#define WEIR_API_CHAOS_H

#define WEIR_CHAOS_MAX_PAIRS 65536
/* The source filter in front of the pairs: 2^16 bits, as 64-bit words. */
#define WEIR_CHAOS_SOURCE_BITS_LOG2 16
#define WEIR_CHAOS_SOURCE_WORDS (1 << (WEIR_CHAOS_SOURCE_BITS_LOG2 - 6))
/* Experiments at once: the size of the per-experiment counters. */
#define WEIR_CHAOS_MAX_EXPERIMENTS 1024

#define WEIR_CHAOS_ACTIONS(X)                                            \
	X(NONE, 0, "no fault")                                            \
	X(PARTITION, 1, "every packet dropped")                           \
	X(LOSS, 2, "each packet dropped with the entry's probability")     \
	X(DUPLICATE, 3, "each packet sent twice with the entry's probability") \
	X(CORRUPT, 4, "a bit of each packet's payload flipped with the entry's probability") \
	X(BANDWIDTH, 5, "each packet queued through the entry's token bucket (a tbf qdisc)") \
	X(DELAY, 6, "each packet held by the agent's delay line while one reads it")

/* CORRUPT: what becomes of the transport checksum after the flip. */
#define WEIR_CHAOS_CHECKSUMS(X)                                                          \
	X(LEFT_WRONG, 0, "left as it was: a receiver that checks it discards the packet") \
	X(FIXED, 1, "repaired: the receiver accepts the corrupted payload")

#define WEIR_CHAOS_CHECKSUM_ENTRY(name, code, desc) WEIR_CHAOS_CHECKSUM_##name = code,
enum weir_chaos_checksum {
	WEIR_CHAOS_CHECKSUMS(WEIR_CHAOS_CHECKSUM_ENTRY)
};
#undef WEIR_CHAOS_CHECKSUM_ENTRY

/* skb->mark bits. On the copy a DUPLICATE entry sends back into the veth
 * it came from; on a packet a BANDWIDTH entry sends through the shaper
 * (which hands it back to that veth). Either is judged by policy and
 * routed like any packet, but no fault touches it again; the bits are
 * cleared before it goes on. */
#define WEIR_CHAOS_COPY_MARK 0x00400000u
#define WEIR_CHAOS_SHAPED_MARK 0x00800000u
/* On a packet a DELAY entry sends out of the shaper veth for the agent's
 * delay line to read: the pair's far end consumes it (the agent holds
 * it, and sends it back with WEIR_CHAOS_SHAPED_MARK when it is due). */
#define WEIR_CHAOS_DELAY_MARK 0x01000000u

#define WEIR_CHAOS_ACTION_ENTRY(name, code, desc) WEIR_CHAOS_##name = code,
enum weir_chaos_action {
	WEIR_CHAOS_ACTIONS(WEIR_CHAOS_ACTION_ENTRY)
	WEIR_CHAOS_ACTION_MAX,
};
#undef WEIR_CHAOS_ACTION_ENTRY

/* From sender to receiver, as the sender's packet has them. IPv4 in [0],
 * the rest zero. */
struct weir_chaos_key {
	__be32 src[4];
	__be32 dst[4];
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
};

struct weir_chaos_entry {
	/* CLOCK_MONOTONIC (bpf_ktime_get_ns); from then on the entry does
	 * nothing. */
	__u64 end_ns;
	__u32 action;      /* enum weir_chaos_action */
	/* LOSS, DUPLICATE, CORRUPT: a packet is hit when the draw is below
	 * this; 0xffffffff: always. */
	__u32 probability;
	/* The chance (of 2^32) that a packet shares the previous packet's
	 * fate instead of a fresh draw; the rate stays `probability`, the hits
	 * come in bursts. */
	__u32 correlation;
	__u32 experiment;  /* slot in chaos_counters */
	__u32 last_hit;    /* written by the kernel: the previous fate */
	__u32 checksum;    /* CORRUPT: enum weir_chaos_checksum */
	/* BANDWIDTH: the shaper veth whose egress qdisc (htb) holds the
	 * sender's token bucket, and that bucket's class (skb->priority). */
	__u32 shaper_ifindex;
	__u32 shaper_class;
};

/* A socket fault: connect() from a pod (its cgroup) to an address fails. */
struct weir_chaos_connect_key {
	__u64 cgroup;      /* the calling pod's cgroup id */
	__be32 dst[4];     /* after the socket load balancer's translation */
	__u8 family;       /* 4 or 6 */
	__u8 pad[7];
};

struct weir_chaos_connect {
	__u64 end_ns;      /* as weir_chaos_entry's */
	__u32 error;       /* the errno connect() returns */
	__u32 probability; /* of 2^32: the share of calls failed; 0xffffffff all */
	__u32 experiment;  /* slot in chaos_counters */
	__u32 pad;
};

/* Weir's ServiceChaos: a share of a service's new connections (or
 * unconnected UDP sends) refused with an errno, or sent to a black hole,
 * judged in the socket load balancer by the frontend the call names. */
#define WEIR_CHAOS_SERVICE_ACTIONS(X)                                         \
	X(NONE, 0, "no fault")                                                \
	X(REFUSE, 1, "the call fails with the entry's errno")                 \
	X(BLACKHOLE, 2, "the call goes to the black hole address, which the pod path drops")

#define WEIR_CHAOS_SERVICE_ENTRY(name, code, desc) WEIR_CHAOS_SERVICE_##name = code,
enum weir_chaos_service_action {
	WEIR_CHAOS_SERVICE_ACTIONS(WEIR_CHAOS_SERVICE_ENTRY)
};
#undef WEIR_CHAOS_SERVICE_ENTRY

/* The black hole: a connection sent nowhere is translated to this address
 * (its experiment's slot in the low 16 bits), the service's port kept; the
 * pod path drops whatever a pod sends there (WEIR_DROP_CHAOS_BLACKHOLE).
 * IPv4 240.177.0.0/16 (reserved, class E), host order; IPv6 100::/64, RFC
 * 6666's discard-only prefix (first word, host order; the rest zero but
 * the slot). */
#define WEIR_CHAOS_BLACKHOLE4_NET 0xf0b10000u
#define WEIR_CHAOS_BLACKHOLE4_MASK 0xffff0000u
#define WEIR_CHAOS_BLACKHOLE6_FIRST 0x01000000u

/* A service fault: calls from a pod (its cgroup id; 0 for every client)
 * to a service's frontend, as the socket load balancer's key has it. */
struct weir_chaos_service_key {
	__u64 cgroup;
	__u32 addr[4];     /* the frontend's; IPv4 in addr[0], network order */
	__u16 port;        /* network order */
	__u8 proto;        /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;       /* 4 or 6 */
	__u32 pad;
};

struct weir_chaos_service {
	__u64 end_ns;      /* as weir_chaos_entry's */
	__u32 action;      /* enum weir_chaos_service_action */
	__u32 error;       /* REFUSE: the errno the call returns */
	__u32 probability; /* of 2^32: the share of calls hit; 0xffffffff all */
	__u32 experiment;  /* slot in chaos_counters */
};

/* The agent's delay line: where delayed packets are sent, and until when
 * (ktime ns) an agent is known to read them. The agent renews the lease
 * while it runs; past it, DELAY entries let packets through undelayed
 * rather than send them to nobody. */
struct weir_chaos_delay_line {
	__u32 ifindex;
	__u32 pad;
	__u64 alive_until_ns;
};

#endif
