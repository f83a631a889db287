/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The pod path at tc ingress on every node interface, IPv4 and IPv6: a
 * packet for a pod of this node goes straight into the pod's namespace with bpf_redirect_peer
 * (no node routing, no netfilter); a packet a local pod sends elsewhere is
 * routed with bpf_fib_lookup and sent out the right interface directly.
 * Everything else (the node's own addresses, TTL running out) is left to
 * the node's stack, which knows how to answer. Policy (policy.h) judges a
 * local pod's packets as they leave it and every packet as it enters one.
 */
#ifndef WEIR_LIB_ENDPOINT_H
#define WEIR_LIB_ENDPOINT_H

#include "common.h"
#include "parse.h"
#include "policy.h"
#include "l7.h"
/* WEIR_NO_CHAOS builds the node datapath without chaos: only the chaos
 * cost benchmark's baseline (crates/weir-bpf/build.rs), never attached. */
#ifndef WEIR_NO_CHAOS
#include "chaos.h"
#endif

#define WEIR_AF_INET 2
#define WEIR_AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct weir_endpoint);
} pod_endpoints SEC(".maps");

/* The same pods by IPv6 address (dual-stack). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_addr6);
	__type(value, struct weir_endpoint);
} pod_endpoints6 SEC(".maps");

/* The cluster: every node's pod CIDR and address, never masqueraded. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_pod_cidr);
	__type(value, __u8);
} pod_cidrs SEC(".maps");

/* Overlay mode: each other node's pod CIDR and that node's address. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_pod_cidr);
	__type(value, struct weir_pod_tunnel);
} pod_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_pod_overlay);
} pod_overlay SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_POD_PATH_MAX);
	__type(key, __u32);
	__type(value, __u64);
} pod_paths SEC(".maps");

static __always_inline int endpoint_count(__u32 path, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&pod_paths, &path);

	if (n)
		*n += 1;
	return verdict;
}

/* IPv6 neighbour discovery, and link-local or multicast traffic, belong to
 * the link: the stack answers them, and no policy judges them (as IPv4's
 * ARP, which is not IP at all). */
static __always_inline bool endpoint_link_scoped(const struct weir_pkt *pkt)
{
	const __u8 *dst = (const __u8 *)pkt->dst;

	if (pkt->family != 6)
		return false;
	if (dst[0] == 0xff || (dst[0] == 0xfe && (dst[1] & 0xc0) == 0x80))
		return true;
	return pkt->l4_proto == IPPROTO_ICMPV6 && pkt->icmp_type >= 133 && pkt->icmp_type <= 137;
}

/* The local pod at `addr` (of the packet's family), if there is one. */
static __always_inline const struct weir_endpoint *endpoint_at(const struct weir_pkt *pkt, const __be32 *addr)
{
	struct weir_addr6 key6;
	__u32 key4;

	/* Keys are copied to the stack: a global function's argument memory is
	 * not a map key older kernels (6.1) accept. */
	if (pkt->family == 6) {
		__builtin_memcpy(key6.addr, addr, sizeof(key6.addr));
		return bpf_map_lookup_elem(&pod_endpoints6, &key6);
	}
	key4 = addr[0];
	return bpf_map_lookup_elem(&pod_endpoints, &key4);
}

/* Decrements the TTL (with the IPv4 checksum) or the IPv6 hop limit; false
 * when the stack must answer. */
static __always_inline bool endpoint_hop(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	__u16 old_word, new_word;
	__u8 ttl = pkt->ttl;

	if (ttl <= 1)
		return false;
	ttl--;
	if (pkt->family == 6)
		return !bpf_skb_store_bytes(skb, pkt->l3_off + 7, &ttl, 1, 0);
	/* TTL shares a 16-bit checksum word with the protocol byte. */
	old_word = bpf_htons((__u16)pkt->ttl << 8);
	new_word = bpf_htons((__u16)ttl << 8);
	return !bpf_l3_csum_replace(skb, pkt->l3_off + 10, old_word, new_word, 2) &&
	       !bpf_skb_store_bytes(skb, pkt->l3_off + 8, &ttl, 1, 0);
}

static __always_inline bool endpoint_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	return !bpf_skb_store_bytes(skb, 0, dst, 6, 0) && !bpf_skb_store_bytes(skb, 6, src, 6, 0);
}

/* The overlay device, when one is configured. */
static __always_inline const struct weir_pod_overlay *endpoint_overlay(void)
{
	const struct weir_pod_overlay *overlay;
	__u32 zero = 0;

	overlay = bpf_map_lookup_elem(&pod_overlay, &zero);
	return overlay && overlay->ifindex ? overlay : 0;
}

/* The node to tunnel to for `daddr` (the ipcache's tunnel endpoint, else,
 * for IPv4, its pod CIDR's node); 0: not behind the overlay. */
static __always_inline __u32 endpoint_tunnel_for(__u8 family, const __be32 *daddr)
{
	struct weir_pod_cidr cidr = {.prefixlen = 32, .addr = daddr[0]};
	const struct weir_pod_tunnel *tunnel;
	__u32 remote;

	if (!endpoint_overlay())
		return 0;
	remote = ipcache_tunnel_endpoint(family, daddr);
	if (remote || family == 6)
		return remote;
	tunnel = bpf_map_lookup_elem(&pod_tunnels, &cidr);
	return tunnel ? tunnel->node_addr : 0;
}

/* Sends the packet into the overlay to `remote` (a node's IPv4 address),
 * the VNI carrying the source's identity; TC_ACT_OK (the stack) when that fails. */
static __always_inline int endpoint_encapsulate(struct __sk_buff *skb, __u32 remote, __u32 src_identity)
{
	const struct weir_pod_overlay *overlay = endpoint_overlay();
	struct bpf_tunnel_key key = {.tunnel_ttl = 64};

	if (!overlay || !remote)
		return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
	key.tunnel_id = src_identity;
	key.remote_ipv4 = bpf_ntohl(remote);
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
	return endpoint_count(WEIR_POD_ENCAPSULATED, bpf_redirect(overlay->ifindex, 0));
}

/* The local pod that sent this packet from its own veth, if one did. */
static __always_inline const struct weir_endpoint *endpoint_sender(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	const struct weir_endpoint *from = endpoint_at(pkt, pkt->src);

	return from && from->ifindex == skb->ingress_ifindex ? from : 0;
}

/* The source: the sending pod's identity, the VNI's for a packet out of the
 * overlay (another node's host is a remote node here), else the ipcache's
 * for its address (looked up only when conntrack does not know the flow). */
static __always_inline struct policy_peer endpoint_source(struct __sk_buff *skb, const struct weir_endpoint *from)
{
	struct policy_peer peer = {.is_source = true};
	const struct weir_pod_overlay *overlay;
	struct bpf_tunnel_key key = {};

	if (from) {
		peer.identity = from->identity;
		return peer;
	}
	overlay = endpoint_overlay();
	if (overlay && overlay->ifindex == skb->ingress_ifindex && !bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) &&
	    key.tunnel_id)
		peer.identity = key.tunnel_id == WEIR_IDENTITY_HOST ? WEIR_IDENTITY_REMOTE_NODE : key.tunnel_id;
	return peer;
}

/*
 * Egress policy, first thing at tc ingress (before any translation): a
 * packet a local pod sends is judged against its destination's identity.
 * Invalid packets from a pod are dropped with their reason. TC_ACT_OK for
 * everything else.
 */
static __always_inline int endpoint_egress(struct __sk_buff *skb, const struct weir_pkt *pkt,
					   enum weir_drop_reason invalid)
{
	struct flow_note note = {.direction = WEIR_POLICY_EGRESS, .match = WEIR_POLICY_MATCH_NONE};
	struct policy_peer peer = {};
	const struct weir_endpoint *from;

	if (!pkt->family || pkt->vlan_id || endpoint_link_scoped(pkt))
		return TC_ACT_OK;
	from = endpoint_sender(skb, pkt);
	if (!from)
		return TC_ACT_OK;
	if (invalid != WEIR_DROP_NONE) {
		note.self_identity = from->identity;
		note.ifindex = skb->ifindex;
		return policy_drop(skb, pkt, &note, invalid);
	}
	int verdict;
#ifndef WEIR_NO_CHAOS
	/* Chaos first: a fault applies whatever the policy would say (a
	 * shaped packet is judged when the shaper hands it back). */
	verdict = chaos_judge(skb, pkt, from);
	if (verdict != TC_ACT_OK)
		return verdict;
#endif
	verdict = policy_check(skb, pkt, from, WEIR_POLICY_EGRESS, &peer);
	/* What the pod may send: a request it makes is an L7 event. */
	if (verdict == TC_ACT_OK)
		l7_observe(skb, pkt, from, WEIR_POLICY_EGRESS);
	return verdict;
}

#ifndef WEIR_NO_CHAOS
/* The bandwidth shaper's far end: each packet back to its sender's veth. */
static __always_inline int endpoint_shaper_return(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	if (!pkt->family)
		return TC_ACT_OK;
	return chaos_shaper_return(skb, pkt, endpoint_at(pkt, pkt->src));
}
#endif

/* Ingress policy at tc egress of a pod's veth: what the node's stack sends
 * into the pod (the node itself, or traffic the stack routed). */
static __always_inline int endpoint_from_stack(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	struct policy_peer peer = {.is_source = true};
	const struct weir_endpoint *to;

	if (!pkt->family || pkt->vlan_id || endpoint_link_scoped(pkt))
		return TC_ACT_OK;
	to = endpoint_at(pkt, pkt->dst);
	if (!to || to->ifindex != skb->ifindex)
		return TC_ACT_OK;
	if (policy_check(skb, pkt, to, WEIR_POLICY_INGRESS, &peer) != TC_ACT_OK)
		return TC_ACT_SHOT;
	/* Delivered: a response the pod receives is an L7 event. */
	l7_observe(skb, pkt, to, WEIR_POLICY_INGRESS);
	return TC_ACT_OK;
}

/* A local pod's packet to somewhere off the node: routed by the kernel's
 * FIB and sent out directly; dropped when the FIB says unreachable. */
static __always_inline int endpoint_forward(struct __sk_buff *skb, const struct weir_pkt *pkt,
					    const struct weir_endpoint *from)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.l4_protocol = pkt->l4_proto;
	fib.tot_len = skb->len - pkt->l3_off;
	fib.ifindex = skb->ingress_ifindex;
	if (pkt->family == 6) {
		fib.family = WEIR_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, pkt->src, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, pkt->dst, sizeof(fib.ipv6_dst));
	} else {
		fib.family = WEIR_AF_INET;
		fib.ipv4_src = pkt->src[0];
		fib.ipv4_dst = pkt->dst[0];
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE || rc == BPF_FIB_LKUP_RET_PROHIBIT) {
		struct flow_note note = {
			.self_identity = from->identity, .peer_identity = ipcache_identity(pkt->family, pkt->dst),
			.ifindex = skb->ifindex, .direction = WEIR_POLICY_EGRESS, .match = WEIR_POLICY_MATCH_NONE,
		};
		return policy_drop(skb, pkt, &note, WEIR_DROP_NO_ROUTE);
	}
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || fib.ifindex == skb->ingress_ifindex)
		return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
	if (!endpoint_hop(skb, pkt))
		return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return endpoint_count(WEIR_POD_FORWARDED, bpf_redirect_neigh(fib.ifindex, 0, 0, 0));
	if (!endpoint_macs(skb, fib.dmac, fib.smac))
		return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
	return endpoint_count(WEIR_POD_FORWARDED, bpf_redirect(fib.ifindex, 0));
}

/* TC_ACT_OK to let the stack have it, else a redirect or a drop. Expects a
 * valid parsed packet, and egress policy judged (endpoint_egress). */
static __always_inline int endpoint_route(struct __sk_buff *skb, const struct weir_pkt *pkt)
{
	const struct weir_endpoint *to, *from;
	struct policy_peer source;
	__u32 remote;

	if (!pkt->family || pkt->vlan_id || endpoint_link_scoped(pkt))
		return TC_ACT_OK;
	from = endpoint_sender(skb, pkt);
	to = endpoint_at(pkt, pkt->dst);
	/* A chained endpoint's forwarding is its plugin's: its packets were
	 * judged leaving it (endpoint_egress) and are judged entering it at its
	 * veth's tc egress (endpoint_from_stack), wherever the stack or the
	 * bridge sends them from here. */
	if ((from && (from->flags & WEIR_ENDPOINT_CHAINED_FLAG)) || (to && (to->flags & WEIR_ENDPOINT_CHAINED_FLAG)))
		return endpoint_count(WEIR_POD_CHAINED, TC_ACT_OK);
	if (to) {
		if (to->ifindex == skb->ingress_ifindex)
			return TC_ACT_OK; /* hairpin: the stack handles it */
		source = endpoint_source(skb, from);
		if (policy_check(skb, pkt, to, WEIR_POLICY_INGRESS, &source) != TC_ACT_OK)
			return TC_ACT_SHOT;
		l7_observe(skb, pkt, to, WEIR_POLICY_INGRESS);
		if (!endpoint_hop(skb, pkt) || !endpoint_macs(skb, to->pod_mac, to->node_mac))
			return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
		return endpoint_count(WEIR_POD_DELIVERED, bpf_redirect_peer(to->ifindex, 0));
	}
	/* Only what a local pod sends from its own veth is routed here. */
	if (!from)
		return TC_ACT_OK;
	/* Overlay mode: another node's pod goes into the tunnel to that node. */
	remote = endpoint_tunnel_for(pkt->family, pkt->dst);
	if (remote) {
		if (!endpoint_hop(skb, pkt))
			return endpoint_count(WEIR_POD_TO_STACK, TC_ACT_OK);
		return endpoint_encapsulate(skb, remote, from->identity);
	}
	return endpoint_forward(skb, pkt, from);
}

#endif
