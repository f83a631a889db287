/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Identity-based policy on the pod path (see bpf/api/policy.h).
 *
 * A packet leaving a local pod is judged by that pod's egress policy against
 * the destination's identity; a packet entering a local pod by its ingress
 * policy against the source's identity (from the VXLAN header in overlay
 * mode, else the ipcache). A flow allowed once is remembered in conntrack
 * and its later packets, both ways, skip the policy map — until the pod's
 * policy revision changes, when the flow is judged again.
 */
#ifndef WEIR_LIB_POLICY_H
#define WEIR_LIB_POLICY_H

#include "common.h"
#include "parse.h"
#include "traffic.h"
#include "sock_owner.h"
#include "ring_wakeup.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_ipcache_key);
	__type(value, struct weir_ipcache_entry);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_ipcache6_key);
	__type(value, struct weir_ipcache_entry);
} ipcache6 SEC(".maps");

/* Never read or written: layouts userspace writes and reads but no program
 * names by value; a global keeps each type whole in BTF for the skeleton. */
struct weir_policy_key weir_policy_key_layout = {};
struct weir_policy_entry weir_policy_entry_layout = {};
struct weir_flow_event weir_flow_event_layout = {};

/* One per local pod, swapped whole into policy_maps: a policy change is one
 * map update, so no packet ever sees half of it. */
struct policy_map {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_policy_key);
	__type(value, struct weir_policy_entry);
};

/* Never used by a program: userspace creates each pod's map with exactly
 * this map's attributes (flags, BTF), which the kernel demands of an inner
 * map and which differ between kernels and libbpf's choices. */
struct policy_map policy_map_template SEC(".maps");

/* Keyed by the pod's address (network order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__type(key, __u32);
	__array(values, struct policy_map);
} policy_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_CT_MAX);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_ct_entry);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_FLOW_RING_BYTES);
} flow_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_FLOW_LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} flow_losses SEC(".maps");

/* What the pod path dropped, by enum weir_drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct weir_counter);
} pod_drops SEC(".maps");

/* The reader polls on a short timer; it is woken only when this much
 * comes to wait (ring_wakeup.h). */
#define WEIR_FLOW_WAKEUP_BYTES (1 << 20)

/* What the ipcache knows of an address of `family` (IPv4 in addr[0]). */
static __always_inline const struct weir_ipcache_entry *ipcache_lookup(__u8 family, const __be32 *addr)
{
	struct weir_ipcache6_key key6 = {.prefixlen = 128};
	struct weir_ipcache_key key = {.prefixlen = 32};

	if (family == 6) {
		__builtin_memcpy(key6.addr, addr, sizeof(key6.addr));
		return bpf_map_lookup_elem(&ipcache6, &key6);
	}
	key.addr = addr[0];
	return bpf_map_lookup_elem(&ipcache, &key);
}

static __always_inline __u32 ipcache_identity(__u8 family, const __be32 *addr)
{
	const struct weir_ipcache_entry *entry = ipcache_lookup(family, addr);

	return entry ? entry->identity : WEIR_IDENTITY_WORLD;
}

/* Where the ipcache says `addr` lives; 0 when not behind the overlay. */
static __always_inline __u32 ipcache_tunnel_endpoint(__u8 family, const __be32 *addr)
{
	const struct weir_ipcache_entry *entry = ipcache_lookup(family, addr);

	return entry ? entry->tunnel_endpoint : 0;
}

struct flow_note {
	__u32 self_identity, peer_identity, rule, ifindex, drop_reason;
	/* The local pod's namespace (its endpoint's), to find its socket. */
	__u32 netnsid_plus_one;
	__u8 direction, verdict, match;
};

/* Asked before reserving a `size`-byte record (ring_wakeup.h). */
static __always_inline __u64 flow_wakeup_flags(__u64 size)
{
	return ring_wakeup_flags(&flow_ring, size, WEIR_FLOW_WAKEUP_BYTES);
}

/* A flow event's fields from the packet and the note (L7 events start
 * with one), seen at `now`: CLOCK_BOOTTIME (bpf_ktime_get_boot_ns), as
 * OpenSSL's events (tls.h), so every flow has one clock and a stamp from
 * before a suspend keeps its moment. A clock read is not free under a
 * hypervisor: a caller that has one passes it. */
static __always_inline void flow_fill(struct weir_flow_event *ev, const struct weir_pkt *pkt,
				      const struct flow_note *note, __u64 now)
{
	ev->time_ns = now;
	__builtin_memcpy(ev->src, pkt->src, sizeof(ev->src));
	__builtin_memcpy(ev->dst, pkt->dst, sizeof(ev->dst));
	ev->sport = pkt->sport;
	ev->dport = pkt->dport;
	ev->protocol = pkt->l4_proto;
	ev->direction = note->direction;
	ev->verdict = note->verdict;
	ev->match = note->match;
	ev->drop_reason = note->drop_reason;
	if (note->direction == WEIR_POLICY_INGRESS) {
		ev->src_identity = note->peer_identity;
		ev->dst_identity = note->self_identity;
	} else {
		ev->src_identity = note->self_identity;
		ev->dst_identity = note->peer_identity;
	}
	ev->rule = note->rule;
	ev->ifindex = note->ifindex;
	ev->tcp_flags = pkt->tcp_flags;
	ev->icmp_type = pkt->icmp_type;
	ev->family = pkt->family;
	ev->pad = 0;
	ev->src_pid = 0;
	ev->dst_pid = 0;
	__builtin_memset(ev->owner_comm, 0, sizeof(ev->owner_comm));
}

static __always_inline void flow_post(struct __sk_buff *skb, const struct weir_pkt *pkt,
				      const struct flow_note *note)
{
	struct weir_flow_event *ev;
	__u64 flags = flow_wakeup_flags(sizeof(*ev));
	__u32 lost = WEIR_FLOW_LOSS_RING_FULL;
	__u64 *n;

	ev = bpf_ringbuf_reserve(&flow_ring, sizeof(*ev), 0);
	if (!ev) {
		n = bpf_map_lookup_elem(&flow_losses, &lost);
		if (n)
			*n += 1;
		return;
	}
	flow_fill(ev, pkt, note, bpf_ktime_get_boot_ns());
	sock_owner_note(skb, ev, note->netnsid_plus_one, note->direction != WEIR_POLICY_INGRESS);
	bpf_ringbuf_submit(ev, flags);
}

/* Counts and reports a drop; returns TC_ACT_SHOT. */
static __always_inline int policy_drop(struct __sk_buff *skb, const struct weir_pkt *pkt, struct flow_note *note,
				       __u32 reason)
{
	note->verdict = WEIR_FLOW_DROPPED;
	note->drop_reason = reason;
	weir_count(&pod_drops, reason, skb->len);
	flow_post(skb, pkt, note);
	return TC_ACT_SHOT;
}

/* Turns a conntrack key into the other direction's key (twice: back). In
 * place: the tc program and this check share 512 bytes of stack. */
static __always_inline void ct_key_reverse(struct weir_ct_key *key)
{
	__be32 addr[4];
	__be16 port = key->sport;

	__builtin_memcpy(addr, key->src, sizeof(addr));
	__builtin_memcpy(key->src, key->dst, sizeof(key->src));
	__builtin_memcpy(key->dst, addr, sizeof(key->dst));
	key->sport = key->dport;
	key->dport = port;
	key->direction ^= 1;
}

/* The other end of a judged packet: its identity when the caller knows it
 * (0: look the packet's address on that side up in the ipcache, which is
 * done only when conntrack does not know the flow). */
struct policy_peer {
	__u32 identity;
	bool is_source;
};

/*
 * Judges one packet for the local pod `ep` in `direction`. TC_ACT_OK to go
 * on, TC_ACT_SHOT when dropped (counted, reported). A global function: the
 * verifier checks it once, not once per caller and address family.
 */
__noinline int policy_check(struct __sk_buff *skb, const struct weir_pkt *pkt, const struct weir_endpoint *ep,
			    __u8 direction, const struct policy_peer *peer)
{
	struct weir_ct_key ct_key = {};
	struct weir_policy_key key = {.prefixlen = WEIR_POLICY_PREFIX_FULL, .identity = WEIR_IDENTITY_MARKER};
	struct flow_note note = {
		.direction = direction, .verdict = WEIR_FLOW_FORWARDED, .match = WEIR_POLICY_MATCH_NOT_ENFORCED,
	};
	/* specific becomes the deciding entry */
	const struct weir_policy_entry *marker = 0, *specific, *any;
	struct weir_ct_entry fresh = {};
	const struct weir_ct_entry *ct;
	const struct weir_ipcache_entry *cached;
	__u32 lookup_identity;
	__u32 enforced_flag = direction == WEIR_POLICY_INGRESS ? WEIR_POLICY_F_INGRESS_ENFORCED
							       : WEIR_POLICY_F_EGRESS_ENFORCED;
	__be32 ep_key;
	void *policy;

	/* A global function's pointers may be NULL as far as the verifier knows. */
	if (!skb || !pkt || !ep || !peer)
		return TC_ACT_OK;
	note.self_identity = ep->identity;
	note.netnsid_plus_one = ep->netnsid_plus_one;
	note.ifindex = skb->ifindex;
	fresh.revision = ep->policy_revision;
	ep_key = ep->pod_key;
	ct_key.sport = pkt->sport;
	ct_key.dport = pkt->dport;
	ct_key.protocol = pkt->l4_proto;
	ct_key.family = pkt->family;
	ct_key.direction = direction;
	__builtin_memcpy(ct_key.src, pkt->src, sizeof(ct_key.src));
	__builtin_memcpy(ct_key.dst, pkt->dst, sizeof(ct_key.dst));
	/* An established flow, either way: no policy lookup at all. */
	ct = bpf_map_lookup_elem(&conntrack, &ct_key);
	if (ct && ct->revision == fresh.revision)
		return TC_ACT_OK;
	ct_key_reverse(&ct_key);
	ct = bpf_map_lookup_elem(&conntrack, &ct_key);
	if (ct && ct->revision == fresh.revision)
		return TC_ACT_OK;
	ct_key_reverse(&ct_key);

	cached = ipcache_lookup(pkt->family, peer->is_source ? pkt->src : pkt->dst);
	note.peer_identity = peer->identity ? peer->identity : (cached ? cached->identity : WEIR_IDENTITY_WORLD);
	/* The address's own identity when ipBlocks split its label identity,
	 * only when the packet's identity (sender, VXLAN or ipcache) is the
	 * address's: an address never lends its entries to another identity. */
	lookup_identity = cached && cached->address_identity && cached->identity == note.peer_identity
				  ? cached->address_identity
				  : note.peer_identity;
	policy = bpf_map_lookup_elem(&policy_maps, &ep_key);
	if (policy)
		marker = bpf_map_lookup_elem(policy, &key);
	if (policy && marker && (marker->flags & enforced_flag)) {
		key.identity = lookup_identity;
		key.direction = direction;
		key.protocol = pkt->l4_proto;
		key.port = pkt->dport;
		specific = bpf_map_lookup_elem(policy, &key);
		key.identity = WEIR_IDENTITY_ANY;
		any = bpf_map_lookup_elem(policy, &key);
		/* Deny wins, for the identity or for any; then an allow in either. */
		if (!specific || !(specific->flags & WEIR_POLICY_F_DENY))
			specific = any && (any->flags & WEIR_POLICY_F_DENY) ? any : (specific ? specific : any);
		if (!specific) {
			note.match = WEIR_POLICY_MATCH_DEFAULT_DENY;
			return policy_drop(skb, pkt, &note, WEIR_DROP_POLICY_DENIED);
		}
		note.match = WEIR_POLICY_MATCH_RULE;
		note.rule = specific->rule;
		if (specific->flags & WEIR_POLICY_F_DENY)
			return policy_drop(skb, pkt, &note, WEIR_DROP_POLICY_DENY_RULE);
	}
	fresh.rule = note.rule;
	if (bpf_map_update_elem(&conntrack, &ct_key, &fresh, BPF_ANY))
		return policy_drop(skb, pkt, &note, WEIR_DROP_CT_MAP_FULL);
	flow_post(skb, pkt, &note);
	return TC_ACT_OK;
}

#endif
