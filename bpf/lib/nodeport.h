/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * North-south service translation at tc ingress (see bpf/api/service.h):
 * NodePort, LoadBalancer and external-IP frontends reached from outside the
 * node. Translated packets skip the host's input routing: bpf_fib_lookup
 * finds the way and bpf_redirect_neigh sends them there. Untranslated
 * packets pass untouched. The one drop: a new flow to a frontend with
 * loadBalancerSourceRanges from a client outside them (counted in `drops`).
 */
#ifndef WEIR_LIB_NODEPORT_H
#define WEIR_LIB_NODEPORT_H

#include "common.h"
#include "parse.h"
#include "lb.h"
#include "endpoint.h"
#include "filter.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_LB_MAX_NAT);
	__type(key, struct weir_lb_nat_key);
	__type(value, struct weir_lb_nat);
} lb_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_lb_node_config);
} lb_node_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_LB_MAX_SOURCE_RANGES);
	__type(key, struct weir_lb_source_range_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_source_ranges SEC(".maps");

/* Whether `saddr` is inside one of the service port's source ranges. A
 * global function: verified once, a call and a branch at its caller. */
__noinline int nodeport_source_allowed(__u32 service_id, __be32 saddr)
{
	struct weir_lb_source_range_key key = { .prefixlen = 64, .service_id = service_id, .addr = saddr };

	return bpf_map_lookup_elem(&lb_source_ranges, &key) != 0;
}

/* Affinity for a north-south client: its address, marked apart from netns cookies. */
#define WEIR_LB_CLIENT_IPV4 (1ULL << 63)

static __always_inline __u64 nat_flow_hash(const struct weir_lb_nat_key *key)
{
	return weir_mix64(((__u64)key->saddr << 32 | key->daddr) ^ ((__u64)key->sport << 16 | key->dport));
}

/*
 * Writes both entries of a flow the node sends on as itself, to
 * to_addr:to_port. The reverse entry goes first, on the node port the
 * forward one will use: the original source port, unless another flow holds
 * it; then one other port is tried. Replies are rewritten back to what the
 * flow's first packet had.
 */
static __always_inline struct weir_lb_nat *nat_snat_flow(const struct weir_lb_nat_key *key, __be32 node_addr,
							  __be32 to_addr, __be16 to_port, __u32 service_id,
							  __u32 backend_id, __u64 hash)
{
	struct weir_lb_nat_key reverse_key = {};
	struct weir_lb_nat forward = {}, reverse = {};

	reverse_key.saddr = to_addr;
	reverse_key.daddr = node_addr;
	reverse_key.sport = to_port;
	reverse_key.dport = key->sport;
	reverse_key.proto = key->proto;
	reverse.saddr = key->daddr;
	reverse.daddr = key->saddr;
	reverse.sport = key->dport;
	reverse.dport = key->sport;
	reverse.service_id = service_id;
	reverse.backend_id = backend_id;
	if (bpf_map_update_elem(&lb_nat, &reverse_key, &reverse, BPF_NOEXIST)) {
		reverse_key.dport = bpf_htons(32768 + (__u16)(hash % 28000));
		if (bpf_map_update_elem(&lb_nat, &reverse_key, &reverse, BPF_NOEXIST))
			return 0;
	}
	forward.saddr = node_addr;
	forward.daddr = to_addr;
	forward.sport = reverse_key.dport;
	forward.dport = to_port;
	forward.service_id = service_id;
	forward.backend_id = backend_id;
	if (bpf_map_update_elem(&lb_nat, key, &forward, BPF_ANY))
		return 0;
	return bpf_map_lookup_elem(&lb_nat, key);
}

/*
 * A local pod's first packet to somewhere outside the cluster and off this
 * node (pod path only: the endpoint table is empty otherwise): masquerade
 * it as the node, and record the way back.
 */
static __always_inline struct weir_lb_nat *masquerade_new_flow(struct __sk_buff *skb, const struct weir_lb_nat_key *key,
							       __u8 tcp_flags)
{
	struct weir_pod_cidr dst = {.prefixlen = 32, .addr = key->daddr};
	const struct weir_lb_node_config *config;
	const struct weir_endpoint *from;
	struct bpf_fib_lookup fib = {};
	__u32 saddr = key->saddr, zero = 0;
	int rc;

	from = bpf_map_lookup_elem(&pod_endpoints, &saddr);
	if (!from || from->ifindex != skb->ingress_ifindex || bpf_map_lookup_elem(&pod_cidrs, &dst))
		return 0;
	/* Only flows the pod opens: a reply to a connection that came in (a
	 * NodePort flow another node translated) must keep the pod's address. */
	if (!weir_opens_flow(key->proto, tcp_flags))
		return 0;
	config = bpf_map_lookup_elem(&lb_node_config, &zero);
	if (!config || !config->node_addr)
		return 0;
	/* Only what leaves the node: its own addresses stay with its stack. */
	fib.family = WEIR_AF_INET;
	fib.l4_protocol = key->proto;
	fib.ipv4_src = key->saddr;
	fib.ipv4_dst = key->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || fib.ifindex == skb->ingress_ifindex)
		return 0;
	return nat_snat_flow(key, config->node_addr, key->daddr, key->dport, 0, 0, nat_flow_hash(key));
}

/*
 * A flow's first packet to an external frontend: choose a backend and write
 * both directions' entries.
 */
static __always_inline struct weir_lb_nat *nodeport_new_flow(const struct weir_lb_nat_key *key, bool *refused)
{
	struct weir_lb_key frontend_key = {
		.addr = { key->daddr }, .port = key->dport, .proto = key->proto, .family = 4,
	};
	const struct weir_lb_slot *frontend = bpf_map_lookup_elem(&lb_services, &frontend_key);
	const struct weir_lb_node_config *config;
	const struct weir_lb_backend *backend;
	struct weir_lb_nat *nat;
	__u32 zero = 0, id = 0;
	__u64 hash;

	if (!frontend || !(frontend->flags & WEIR_LB_F_EXTERNAL))
		return 0;
	if ((frontend->flags & WEIR_LB_F_SOURCE_RANGES) && !nodeport_source_allowed(frontend->service_id, key->saddr)) {
		*refused = true;
		return 0;
	}
	config = bpf_map_lookup_elem(&lb_node_config, &zero);
	if (!config || !config->node_addr)
		return 0;
	hash = nat_flow_hash(key);
	backend = frontend->active ? lb_pick(&frontend_key, frontend, WEIR_LB_CLIENT_IPV4 | key->saddr, hash, &id) : 0;
	if (!backend || backend->family != 4) {
		lb_count(frontend->service_id, 0);
		return 0;
	}
	nat = nat_snat_flow(key, config->node_addr, backend->addr[0], backend->port, frontend->service_id, id, hash);
	if (nat)
		lb_count(frontend->service_id, id);
	return nat;
}

/* Rewrites one 32-bit address or 16-bit port, keeping both checksums right. */
static __always_inline int nodeport_rewrite_addr(struct __sk_buff *skb, __u32 addr_off, __u32 csum_off, __u64 l4_flags,
						 __u32 l3_csum_off, __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, from, to, BPF_F_PSEUDO_HDR | sizeof(to) | l4_flags) ||
	    bpf_l3_csum_replace(skb, l3_csum_off, from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0);
}

static __always_inline int nodeport_rewrite_port(struct __sk_buff *skb, __u32 port_off, __u32 csum_off, __u64 l4_flags,
						 __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, from, to, sizeof(to) | l4_flags))
		return -1;
	return bpf_skb_store_bytes(skb, port_off, &to, sizeof(to), 0);
}

/* Translates one packet of a north-south flow; TC_ACT_OK for everything else. */
static __always_inline int nodeport_ingress(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	struct weir_lb_nat_key key = {};
	struct bpf_fib_lookup fib = {};
	const struct weir_lb_nat *nat;
	__u32 csum_off, l3, l4;
	__u64 l4_flags;
	bool refused = false;
	int rc;

	if (pkt->family != 4 || !pkt->has_l4 || pkt->is_fragment ||
	    (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP))
		return TC_ACT_OK;
	key.saddr = pkt->src[0];
	key.daddr = pkt->dst[0];
	key.sport = pkt->sport;
	key.dport = pkt->dport;
	key.proto = pkt->l4_proto;
	nat = bpf_map_lookup_elem(&lb_nat, &key);
	if (!nat)
		nat = nodeport_new_flow(&key, &refused);
	if (refused) {
		weir_count(&drops, WEIR_DROP_LB_SOURCE_RANGE, skb->len);
		return TC_ACT_SHOT;
	}
	if (!nat)
		nat = masquerade_new_flow(skb, &key, pkt->tcp_flags);
	if (!nat)
		return TC_ACT_OK;

	l3 = pkt->l3_off;
	l4 = pkt->l4_off;
	csum_off = l4 + (pkt->l4_proto == IPPROTO_TCP ? 16 : 6);
	/* A UDP checksum of 0 means none: keep it 0. */
	l4_flags = pkt->l4_proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	if (nodeport_rewrite_addr(skb, l3 + 12, csum_off, l4_flags, l3 + 10, key.saddr, nat->saddr) ||
	    nodeport_rewrite_addr(skb, l3 + 16, csum_off, l4_flags, l3 + 10, key.daddr, nat->daddr) ||
	    nodeport_rewrite_port(skb, l4, csum_off, l4_flags, key.sport, nat->sport) ||
	    nodeport_rewrite_port(skb, l4 + 2, csum_off, l4_flags, key.dport, nat->dport))
		return TC_ACT_OK;

	fib.family = WEIR_AF_INET;
	fib.l4_protocol = key.proto;
	fib.ipv4_src = nat->saddr;
	fib.ipv4_dst = nat->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* Overlay mode: a backend on another node has no route; it is behind the tunnel. */
		__be32 daddr[4] = {nat->daddr};
		__u32 remote = endpoint_tunnel_for(4, daddr);

		return remote ? endpoint_encapsulate(skb, remote, WEIR_IDENTITY_HOST) : TC_ACT_OK;
	}
	/* Past the host's input routing, which would refuse the node's own address as a source. */
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

#endif
