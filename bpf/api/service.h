/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The socket load balancer's contract: service frontends, backends, the
 * reverse translation that makes getpeername() and recvmsg() show the
 * service address, client affinity, Maglev tables and counters.
 *
 * Frontend table (lb_services): one key per (address, port, protocol) and
 * slot. Slot 0 describes the frontend; slots 1..active hold the backends
 * (id and a copy of address and port) that take new connections, and active+1..total the terminating
 * ones (kept for explain; never chosen). A change writes backend slots first
 * and slot 0 last, so a reader sees the old set or the new one; a backend
 * removed from the middle is replaced by the last one before `active`
 * shrinks, so for one moment that backend may be chosen twice as often.
 *
 * Backend choice array (lb_picks): slot 0's `picks` names a run of this
 * array holding a copy of slots 1..active, so a random choice is an array
 * element, not a second hash lookup. A run is never rewritten while a
 * frontend names it (a change writes a fresh run, then slot 0); 0 means no
 * run, and the choice takes the slot entries (crates/weir-service/src/picks.rs).
 */
#ifndef WEIR_API_SERVICE_H
#define WEIR_API_SERVICE_H

#define WEIR_LB_MAX_SLOTS 262144
/* Runs are powers of two: 10k services of 10 backends take 160k. */
#define WEIR_LB_MAX_PICKS 262144
#define WEIR_LB_MAX_SERVICES 65536
/* Backends are per service port: 10k services of 10 backends fit. */
#define WEIR_LB_MAX_BACKENDS 262144
#define WEIR_LB_MAX_REVNAT 65536
#define WEIR_LB_MAX_AFFINITY 65536
#define WEIR_LB_MAX_OPT_OUT 4096
/* Prime, and over 100 times the backends a Maglev service may have (100). */
#define WEIR_LB_MAGLEV_SIZE 16381
#define WEIR_LB_MAGLEV_MAX_BACKENDS 100

/* Frontend flags (slot 0). */
#define WEIR_LB_F_AFFINITY (1 << 0) /* sessionAffinity: ClientIP */
#define WEIR_LB_F_MAGLEV (1 << 1)   /* choose through the service's Maglev table */
#define WEIR_LB_F_EXTERNAL (1 << 2) /* NodePort, LoadBalancer or external IP: translated at tc too */
#define WEIR_LB_F_SOURCE_RANGES (1 << 3) /* loadBalancerSourceRanges: other north-south clients are dropped */

#define WEIR_LB_BACKEND_STATES(X)                                          \
	X(ACTIVE, 0, "takes new connections")                              \
	X(TERMINATING, 1, "takes no new connections; existing ones continue") \
	X(QUARANTINED, 2, "failed its health probe; takes no new connections")

#define WEIR_LB_BACKEND_STATE_ENTRY(name, code, desc) WEIR_LB_BACKEND_##name = code,
enum weir_lb_backend_state {
	WEIR_LB_BACKEND_STATES(WEIR_LB_BACKEND_STATE_ENTRY)
	WEIR_LB_BACKEND_STATE_MAX,
};
#undef WEIR_LB_BACKEND_STATE_ENTRY

struct weir_lb_key {
	__u32 addr[4]; /* IPv4 in addr[0]; network order */
	__u16 port;    /* network order */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* 4 or 6 */
	__u16 slot;
	__u16 pad;
};

struct weir_lb_backend {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
	__u8 state; /* enum weir_lb_backend_state */
	__u8 pad[3];
	__u32 service_id; /* the service port this backend serves */
};

struct weir_lb_slot {
	__u32 backend_id;       /* slots 1..total */
	__u32 service_id;       /* slot 0: index of counters, affinity and Maglev */
	__u16 active;           /* slot 0 */
	__u16 total;            /* slot 0 */
	__u16 flags;            /* slot 0: WEIR_LB_F_* */
	__u16 no_backend_errno; /* slot 0: connect() fails with this when active == 0; 0 lets it through */
	__u32 affinity_timeout; /* slot 0: seconds */
	__u32 picks;            /* slot 0: first element of its run in lb_picks; 0 for none */
	/* Slots 1..total: a copy of the backend, so a random choice takes one
	 * lookup after the frontend's, not two. */
	struct weir_lb_backend backend;
};

/* An element of lb_picks: a copy of one active slot. */
struct weir_lb_pick {
	__u32 backend_id;
	__u32 pad;
	struct weir_lb_backend backend;
};

/*
 * Written when a TCP connect or an unconnected UDP send is translated:
 * (socket, backend) -> frontend, in a preallocated LRU table (an update
 * allocates nothing). Read by getpeername/recvmsg and by sockops (passive
 * health follows only the TCP connections found here).
 */
struct weir_lb_revnat_key {
	__u64 cookie; /* socket cookie */
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad[5];
};

struct weir_lb_revnat {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 service_id;
};

/*
 * On a connected UDP socket, the translation lives with the socket (socket
 * local storage): it may connect again and again, and the iter/udp program
 * that ends sockets of a departed backend reads it there. Creating it costs
 * two allocations per socket, so TCP connects use lb_revnat instead.
 */
struct weir_lb_sock_revnat {
	__u32 backend_addr[4];
	__u32 service_addr[4];
	__u16 backend_port;
	__u16 service_port;
	__u32 service_id;
};

/*
 * Connected UDP sockets whose backend left its service (or was quarantined):
 * the agent writes (service id, backend) here and runs the iter/udp program
 * in each client network namespace; a socket whose translation names one is
 * ended with bpf_sock_destroy (kube-proxy flushes conntrack for the same
 * reason). The program writes one byte per such socket: 'e' ended, 'x' found
 * but not ended (the kernel has no bpf_sock_destroy).
 */
#define WEIR_LB_MAX_GONE 4096
#define WEIR_LB_END_ENDED 'e'
#define WEIR_LB_END_KEPT 'x'

struct weir_lb_gone_key {
	__u32 service_id;
	__u32 addr[4]; /* the backend's, as in weir_lb_backend */
	__u16 port;    /* network order */
	__u16 pad;
};

/*
 * Passive health (Envoy's outlier detection): a connection from this node
 * that a backend refused, reset or let time out marks it suspect at once
 * (cgroup sockops, state callback). The socket load balancer skips a
 * suspect backend as it skips a quarantined one, unless every active
 * backend of the frontend is suspect, for WEIR_LB_SUSPECT_SECONDS or until
 * the agent's probe of the backend passes and clears the mark.
 */
#define WEIR_LB_MAX_SUSPECTS 16384
#define WEIR_LB_SUSPECT_SECONDS 30

struct weir_lb_suspect_key {
	__u32 addr[4]; /* the backend's, as in weir_lb_backend */
	__u16 port;    /* network order */
	__u8 proto;
	__u8 pad;
};

struct weir_lb_suspect {
	__u64 marked_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last failure */
	__u64 failures;  /* failed connections seen since the mark was made */
};

/* Affinity is per client network namespace: a pod, in the lab. */
struct weir_lb_affinity_key {
	__u64 client; /* netns cookie */
	__u32 service_id;
	__u32 pad;
};

struct weir_lb_affinity {
	__u32 backend_id;
	__u32 last_used; /* seconds since boot */
};

struct weir_lb_service_stats {
	__u64 connects;   /* translated connect() and sendmsg() calls */
	__u64 no_backend; /* calls that found no active backend */
};

struct weir_lb_backend_stats {
	__u64 connects;
};

/*
 * North-south translation at tc (NodePort, LoadBalancer, external IPs from
 * outside the node), IPv4: a flow's first packet picks a backend; both
 * directions get an entry, keyed by the packet as it arrives. The forward
 * entry rewrites client -> frontend into node -> backend (the source becomes
 * the node, so replies come back through it, wherever the backend is); the
 * reverse entry rewrites backend -> node into frontend -> client.
 */
#define WEIR_LB_MAX_NAT 65536

struct weir_lb_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct weir_lb_nat {
	__be32 saddr; /* rewrite to */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 service_id;
	__u32 backend_id;
};

/*
 * loadBalancerSourceRanges of a service port (IPv4: the north-south path's
 * family), in one longest-prefix-match trie for every service: the service
 * id leads the key, so prefixlen is 32 + the range's length.
 */
#define WEIR_LB_MAX_SOURCE_RANGES 16384

struct weir_lb_source_range_key {
	__u32 prefixlen;
	__u32 service_id;
	__be32 addr;
};

/*
 * Lookups the socket load balancer may skip (lb_quiet, one element): a set
 * bit says the agent knows that map is empty. The agent clears a bit before
 * it writes a map's first entry and sets it only after the map's last entry
 * is gone, so an entry is never ignored; zero (a map just made, pins from an
 * agent before it) does every lookup.
 */
#define WEIR_LB_QUIET_OPT_OUT_FLAG 0x00000001u        /* lb_opt_out */
#define WEIR_LB_QUIET_SERVICE_FAULTS_FLAG 0x00000002u /* chaos_services */
#define WEIR_LB_QUIET_CONNECT_FAULTS_FLAG 0x00000004u /* chaos_connects */

struct weir_lb_quiet {
	__u32 flags; /* WEIR_LB_QUIET_*_FLAG */
};

/* What the agent tells the tc path about its node. */
struct weir_lb_node_config {
	__be32 node_addr; /* the source of translated north-south packets; 0 turns the path off */
};

#endif
