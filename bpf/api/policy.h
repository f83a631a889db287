/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Identity-based network policy: the ipcache (address or CIDR to security
 * identity and tunnel endpoint), each pod's policy map (entries keyed by
 * {identity, direction, protocol, port prefix}), conntrack, and the flow
 * events `weir observe` shows. Identity numbers are Cilium's.
 */
#ifndef WEIR_API_POLICY_H
#define WEIR_API_POLICY_H

#define WEIR_IDENTITY_ANY 0
#define WEIR_IDENTITY_HOST 1
#define WEIR_IDENTITY_WORLD 2
#define WEIR_IDENTITY_REMOTE_NODE 6
/* CIDRs named by policies get node-local identities from here up. */
#define WEIR_IDENTITY_FIRST_CIDR (1u << 24)
/* The key of a policy map's enforcement marker (never a real identity). */
#define WEIR_IDENTITY_MARKER 0xffffffffu

#define WEIR_IPCACHE_MAX 262144
#define WEIR_POLICY_MAX_ENTRIES 65536
#define WEIR_CT_MAX 262144
#define WEIR_FLOW_RING_BYTES (4 << 20)

/* LPM key of the ipcache. */
struct weir_ipcache_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

/* LPM key of ipcache6. */
struct weir_ipcache6_key {
	__u32 prefixlen;
	__be32 addr[4];
};

struct weir_ipcache_entry {
	__u32 identity;
	__u32 tunnel_endpoint; /* network order; 0: not behind the overlay */
	/* Nonzero: the identity this address's policy entries are keyed by,
	 * because Kubernetes ipBlocks tell it apart from the other addresses of
	 * `identity` (node-local; flows and the VXLAN header keep `identity`). */
	__u32 address_identity;
};

#define WEIR_POLICY_INGRESS 0
#define WEIR_POLICY_EGRESS 1

/*
 * LPM key of a pod's policy map. The prefix always covers identity and
 * direction (40 bits); +8 with the protocol; +up to 16 of the port, which is
 * in network order so its high bits come first. Protocol 0: every protocol.
 */
struct weir_policy_key {
	__u32 prefixlen;
	__u32 identity;
	__u8 direction;
	__u8 protocol;
	__be16 port;
};

#define WEIR_POLICY_PREFIX_BASE 40
#define WEIR_POLICY_PREFIX_FULL 64

#define WEIR_POLICY_F_DENY 0x1
/* Only on the marker (identity WEIR_IDENTITY_MARKER, full prefix). */
#define WEIR_POLICY_F_INGRESS_ENFORCED 0x2
#define WEIR_POLICY_F_EGRESS_ENFORCED 0x4

struct weir_policy_entry {
	/* The rule's number (names in the agent); on the marker, the policy
	 * revision (the endpoint table carries it for conntrack checks). */
	__u32 rule;
	__u32 flags;
};

/* One judged direction of a flow: the tuple as it was first seen. IPv4
 * addresses in [0], the rest zero. */
struct weir_ct_key {
	__be32 src[4];
	__be32 dst[4];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 direction;
	__u8 family;
	__u8 pad;
};

struct weir_ct_entry {
	__u32 revision; /* the endpoint's policy revision when judged */
	__u32 rule;
	/* On a client pod's egress entry: when its outstanding HTTP request
	 * left it (0: none), for the response's latency (bpf/lib/l7.h). */
	__u64 http_request_ns;
};

#define WEIR_FLOW_VERDICTS(X)                                                   \
	X(FORWARDED, 0, "a new flow allowed (its first packet), or a packet a chaos fault changed and let through") \
	X(DROPPED, 1, "a packet dropped")

#define WEIR_FLOW_VERDICT_ENTRY(name, code, desc) WEIR_FLOW_##name = code,
enum weir_flow_verdict {
	WEIR_FLOW_VERDICTS(WEIR_FLOW_VERDICT_ENTRY)
	WEIR_FLOW_VERDICT_MAX,
};
#undef WEIR_FLOW_VERDICT_ENTRY

/* Decision of a policy check, recorded in flow events. */
#define WEIR_POLICY_MATCHES(X)                                                  \
	X(NOT_ENFORCED, 0, "no policy selects the endpoint in this direction")   \
	X(RULE, 1, "a rule decided (see the rule number)")                       \
	X(DEFAULT_DENY, 2, "selected by a policy, and no rule allows it")        \
	X(ESTABLISHED, 3, "a packet of a flow already allowed")                  \
	X(NONE, 4, "no policy check (dropped before one)")                    \
	X(CHAOS, 5, "a chaos experiment (the rule number is its slot)")

#define WEIR_POLICY_MATCH_ENTRY(name, code, desc) WEIR_POLICY_MATCH_##name = code,
enum weir_policy_match {
	WEIR_POLICY_MATCHES(WEIR_POLICY_MATCH_ENTRY)
	WEIR_POLICY_MATCH_MAX,
};
#undef WEIR_POLICY_MATCH_ENTRY

struct weir_flow_event {
	__u64 time_ns; /* CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) */
	__be32 src[4]; /* IPv4 in [0] */
	__be32 dst[4];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 direction; /* WEIR_POLICY_INGRESS/EGRESS of the endpoint judged */
	__u8 verdict;   /* enum weir_flow_verdict */
	__u8 match;     /* enum weir_policy_match */
	__u32 drop_reason; /* enum weir_drop_reason; 0 when forwarded */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule;
	__u32 ifindex;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 family; /* 4 or 6 */
	__u8 pad;
	/* The process (thread group) that created the local pod's socket of
	 * this flow, at the end that pod is; 0 where unknown (bpf/lib/sock_owner.h). */
	__u32 src_pid;
	__u32 dst_pid;
	/* That process's command name when it made the socket: what names it
	 * once it is gone (a short-lived client is, by the time it is read). */
	char owner_comm[16];
};

/* What a socket remembers of the process that created it (socket storage,
 * copied onto the sockets a listener accepts). */
struct weir_sock_owner {
	__u32 tgid;
	char comm[16];
};

/* Flow events lost, by cause (agent-side losses are counted by the agent). */
#define WEIR_FLOW_LOSSES(X)                                          \
	X(RING_FULL, 0, "the flow ring buffer was full")

#define WEIR_FLOW_LOSS_ENTRY(name, code, desc) WEIR_FLOW_LOSS_##name = code,
enum weir_flow_loss {
	WEIR_FLOW_LOSSES(WEIR_FLOW_LOSS_ENTRY)
	WEIR_FLOW_LOSS_MAX,
};
#undef WEIR_FLOW_LOSS_ENTRY

#endif
