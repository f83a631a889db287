/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP packet filter's contract: rules, the tuple-space lookup keys, the
 * configuration word that flips generations, and trace events.
 *
 * Lookup: rules are grouped by shape (which of interface, protocol and ports
 * are exact, and the source/destination prefix lengths); a rule is found by
 * one hash lookup of the packet's masked key in filter_keys for its shape.
 * Which shapes are worth a lookup comes from a per-field index, each value a
 * bit set of shape ids: a longest-prefix trie per address field and family
 * (its entries carry the shapes of every shorter prefix in use above them),
 * an array per port and one per protocol. The packet's bit sets, each ORed
 * with the shapes that leave that field open (config any_*), are ANDed: a
 * shape survives only if some rule of it could match every field. So the
 * cost follows the shapes that could match the packet, not the shapes in use.
 * The index may hold more than the rules need (during an update it covers
 * both generations); it never holds less.
 *
 * Atomicity: each rule carries one bit per generation. An update writes new
 * rules live only in the inactive generation, clears the inactive bit of
 * removed ones, then flips filter_config.active in one map update.
 *
 * Precedence: the matching rule with the lowest rank wins. A rank is the
 * rule's priority in the high 32 bits and the order it was added in the low
 * 32, so equal priorities go to the rule added first. No match: pass.
 */
#ifndef WEIR_API_FILTER_H
#define WEIR_API_FILTER_H

#define WEIR_FILTER_MAX_RULES 131072
#define WEIR_FILTER_MAX_SHAPES 16
#define WEIR_FILTER_MAX_CHAIN 8
#define WEIR_FILTER_MAX_BYTE_MATCHES 2
#define WEIR_FILTER_CAPTURE_BYTES 128
#define WEIR_FILTER_NO_RULE 0xFFFFFFFF

#define WEIR_FILTER_ACTIONS(X)                                             \
	X(PASS, 0, "pass: an exception to broader rules")                  \
	X(DROP, 1, "drop")                                                  \
	X(RATE_LIMIT, 2, "pass up to a rate, drop the excess")             \
	X(AUDIT, 3, "count, sample to the event stream, pass")

#define WEIR_FILTER_ACTION_ENTRY(name, code, desc) WEIR_FILTER_##name = code,
enum weir_filter_action {
	WEIR_FILTER_ACTIONS(WEIR_FILTER_ACTION_ENTRY)
	WEIR_FILTER_ACTION_MAX,
};
#undef WEIR_FILTER_ACTION_ENTRY

/* Which key fields a shape matches exactly. */
#define WEIR_SHAPE_IFINDEX (1 << 0)
#define WEIR_SHAPE_PROTO (1 << 1)
#define WEIR_SHAPE_SPORT (1 << 2)
#define WEIR_SHAPE_DPORT (1 << 3)

/* Residual checks a rule makes after its key matched. */
#define WEIR_CHECK_SPORT_RANGE (1 << 0)
#define WEIR_CHECK_DPORT_RANGE (1 << 1)
#define WEIR_CHECK_TCP_FLAGS (1 << 2)
#define WEIR_CHECK_ICMP_TYPE (1 << 3)
#define WEIR_CHECK_ICMP_CODE (1 << 4)
#define WEIR_CHECK_LENGTH (1 << 5)
#define WEIR_CHECK_FRAGMENT (1 << 6)
#define WEIR_CHECK_IP_OPTIONS (1 << 7)
#define WEIR_CHECK_TTL (1 << 8)
#define WEIR_CHECK_BYTES (1 << 9)
#define WEIR_CHECK_EXPRESSION (1 << 10) /* matched only through the expression program */

struct weir_filter_shape {
	__u8 family;     /* 0: any, 4 or 6 */
	__u8 fields;     /* WEIR_SHAPE_* */
	__u16 pad;
	__be32 src_mask[4];
	__be32 dst_mask[4];
	__u32 pad1;
	/* No rule of the shape, in either generation, has a lower rank: once
	 * the packet's best rule so far ranks at or below it, the shape's lookup
	 * cannot change the outcome and is skipped. Lowered before rules of a
	 * lower rank go live, raised only after removed ones are gone; 0 (never
	 * skip) is always safe. */
	__u64 best_rank;
};

struct weir_filter_key {
	__u32 shape;
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u16 pad;
	__be32 src[4];
	__be32 dst[4];
};

struct weir_filter_bytes {
	__u8 base;       /* 0: from the L3 header, 1: from the L4 header */
	__u8 len;        /* 1..4 */
	__u16 offset;
	__u32 value;     /* big-endian bytes, left-aligned in the low `len` bytes */
	__u32 mask;
};

struct weir_filter_rule {
	__u64 rank;         /* priority << 32 | order added; lower wins */
	__u32 next;         /* slot + 1 of the next rule with the same key; 0 ends */
	__u32 pad0;
	__u8 generations;   /* bit g: live in generation g */
	__u8 action;        /* enum weir_filter_action */
	__u8 per_source;    /* rate limit per source address instead of per rule */
	__u8 fragment;      /* with WEIR_CHECK_FRAGMENT: 1 fragments only, 0 none */
	__u16 checks;       /* WEIR_CHECK_* */
	__u8 tcp_flags_mask;
	__u8 tcp_flags_value;
	__u16 sport_lo, sport_hi, dport_lo, dport_hi;
	__u16 len_min, len_max;
	__u8 icmp_type, icmp_code;
	__u8 ttl_min, ttl_max;
	__u8 ip_options;    /* with WEIR_CHECK_IP_OPTIONS: 1 present, 0 absent */
	__u8 pad[3];
	struct weir_filter_bytes bytes[WEIR_FILTER_MAX_BYTE_MATCHES];
	__u64 token_cost_ns;   /* 1e9 / packets per second */
	__u64 bucket_ns;       /* burst * token_cost_ns */
};

struct weir_filter_config {
	__u32 active;                 /* the live generation, 0 or 1 */
	__u32 shapes[2];              /* bit i: shape i is in use, per generation */
	/* Shapes (of either generation) that leave a field open: its index cannot rule them out. */
	__u32 any_src, any_dst, any_proto, any_sport, any_dport;
	/* Rules of the live generation, field and expression. While there are
	 * none, the agent keeps the filter's XDP off pods' veths (pod_veths). */
	__u32 rules;
	__u32 trace;                  /* non-zero: emit sampled events */
	__u32 trace_every;            /* sample one packet in N (0 or 1: every one) */
};

/* Keys of the address indexes (longest-prefix tries): prefix length, then
 * the address's bytes as in the packet. Values: a bit set of shape ids. */
struct weir_filter_prefix4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct weir_filter_prefix6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* The port index, by port in host order: shapes with a rule on exactly it. */
struct weir_filter_port_shapes {
	__u32 sport;
	__u32 dport;
};

/* Token bucket of a rate-limited rule (per rule, or per rule and source). */
struct weir_filter_bucket {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 tokens_ns;
	__u64 last_ns;
};

struct weir_filter_source_key {
	__u32 slot;
	__u8 family;
	__u8 pad[3];
	__be32 addr[4];
};

/* Result of the expression program, handed to the node program in a tail call.
 * The program also reports an 802.1Q tag the kernel took out of the frame
 * (rx VLAN offload): on the wire the frame was 4 bytes longer. */
struct weir_filter_expr_result {
	__u32 valid;
	__u32 slot;
	__u16 vlan_present;
	__u16 vlan_tci;
};

/* A sampled packet in the trace stream. */
struct weir_filter_event {
	__u64 timestamp_ns;
	__u32 slot;
	__u32 ifindex;
	__u32 length;         /* wire length */
	__u16 captured;       /* bytes in data */
	__u8 action;
	__u8 verdict;         /* XDP_DROP or XDP_PASS */
	__u8 data[WEIR_FILTER_CAPTURE_BYTES];
};

#endif
