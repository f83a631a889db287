/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pod endpoints on this node, for delivering packets straight into a pod's
 * network namespace (bpf_redirect_peer) without the node's IP stack, and
 * the counters of what the pod path did.
 */
#ifndef WEIR_API_ENDPOINT_H
#define WEIR_API_ENDPOINT_H

#define WEIR_MAX_ENDPOINTS 65536

/* Keyed by the pod's IPv4 address (network order), and in pod_endpoints6
 * by its IPv6 address (struct weir_addr6): the same value under both. */
struct weir_endpoint {
	__u32 ifindex;    /* the node-side end of the pod's veth */
	__u8 pod_mac[6];  /* the pod's own end (its eth0) */
	__u8 node_mac[6]; /* the node-side end */
	__u32 identity;   /* the pod's security identity (bpf/api/policy.h) */
	/* The revision of the pod's policy map: conntrack entries judged under
	 * another revision are judged again. Written after the map is swapped. */
	__u32 policy_revision;
	/* The pod's IPv4 address (network order): the key of its policy map,
	 * for packets of either family. */
	__u32 pod_key;
	/* The pod's network namespace by its id in the node's namespace (its
	 * veth's IFLA_LINK_NETNSID), plus one; 0: unknown, so a zeroed entry
	 * looks no socket up. Flow events find the pod's socket there. */
	__u32 netnsid_plus_one;
	__u32 flags; /* WEIR_ENDPOINT_*_FLAG */
};

/* A chained endpoint (weir-cni after another CNI plugin, as Cilium's
 * generic-veth chaining): its veth is another plugin's, which also forwards
 * its packets (a Linux bridge, ptp routes). The pod path judges and reports
 * them but never redirects them: they go on where that plugin sends them. */
#define WEIR_ENDPOINT_CHAINED_FLAG 0x1u

struct weir_addr6 {
	__be32 addr[4];
};

/* LPM key of the pod_cidrs table. */
struct weir_pod_cidr {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

/* Overlay routing: where a remote pod CIDR's node is (value of pod_tunnels). */
struct weir_pod_tunnel {
	__u32 node_addr; /* network order */
};

/* The overlay device (a VXLAN device in collect-metadata mode); 0: none.
 * The VNI of each packet carries its source's security identity. */
struct weir_pod_overlay {
	__u32 ifindex;
};

/* IPv6 masquerade: a pod's flow to the outside, as the node sends it on
 * (both directions, keyed by the tuple a packet has on arrival). */
struct weir_nat6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct weir_nat6 {
	__be32 saddr[4]; /* rewrite to */
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
};

/* The node's IPv6 address pods' flows to the outside are masqueraded as;
 * all zero: none (IPv6 flows to the outside are left to the stack). */
struct weir_pod_masq6 {
	__be32 node_addr[4];
};

#define WEIR_POD_PATHS(X)                                                                 \
	X(DELIVERED, 0, "into a local pod with bpf_redirect_peer, past the node's stack") \
	X(FORWARDED, 1, "from a local pod out of the node with a FIB lookup, past the node's stack") \
	X(TO_STACK, 2, "from or to a local pod, left to the node's stack (local address, no route, TTL)") \
	X(ENCAPSULATED, 3, "from a local pod to another node's pod, into the VXLAN overlay") \
	X(CHAINED, 4, "from or to a chained endpoint, left to the plugin that made its interface")

#define WEIR_POD_PATH_ENTRY(name, code, desc) WEIR_POD_##name = code,
enum weir_pod_path {
	WEIR_POD_PATHS(WEIR_POD_PATH_ENTRY)
	WEIR_POD_PATH_MAX,
};
#undef WEIR_POD_PATH_ENTRY

#endif
