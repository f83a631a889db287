/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Chaos on the pod path (see bpf/api/chaos.h): a local pod's packet whose
 * (source, destination) pair has a live entry is dropped as the entry says,
 * with its drop reason, a flow event and its experiment's counter.
 */
#ifndef WEIR_LIB_CHAOS_H
#define WEIR_LIB_CHAOS_H

#include "common.h"
#include "parse.h"
#include "policy.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_key);
	__type(value, struct weir_chaos_entry);
} chaos_pairs SEC(".maps");

/* What each experiment dropped, by its slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_CHAOS_MAX_EXPERIMENTS);
	__type(key, __u32);
	__type(value, struct weir_counter);
} chaos_counters SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace writes them). */
struct weir_chaos_key weir_chaos_key_layout = {};
struct weir_chaos_entry weir_chaos_entry_layout = {};

/* True when this packet is lost. With correlation, a packet shares the
 * previous packet's fate with that chance, else draws afresh: the loss
 * rate stays the entry's probability (netem's correlated draw lowers it). */
static __always_inline bool chaos_lost(struct weir_chaos_entry *entry)
{
	bool lost;

	if (entry->correlation && bpf_get_prandom_u32() < entry->correlation)
		return entry->last_lost;
	lost = entry->probability == 0xffffffffu || bpf_get_prandom_u32() < entry->probability;
	if (entry->correlation)
		entry->last_lost = lost;
	return lost;
}

/*
 * Judges a packet the local pod `from` sends. TC_ACT_OK to go on,
 * TC_ACT_SHOT when a fault dropped it (counted, reported). A global
 * function: verified once, apart from its caller.
 */
__noinline int chaos_check(struct __sk_buff *skb, const struct weir_pkt *pkt, const struct weir_endpoint *from)
{
	struct weir_chaos_key key = {};
	struct weir_chaos_entry *entry;
	struct flow_note note = {.direction = WEIR_POLICY_EGRESS, .match = WEIR_POLICY_MATCH_NONE};
	__u32 reason, slot;

	if (!skb || !pkt || !from)
		return TC_ACT_OK;
	key.family = pkt->family;
	__builtin_memcpy(key.src, pkt->src, sizeof(key.src));
	__builtin_memcpy(key.dst, pkt->dst, sizeof(key.dst));
	entry = bpf_map_lookup_elem(&chaos_pairs, &key);
	if (!entry || bpf_ktime_get_ns() >= entry->end_ns)
		return TC_ACT_OK;
	if (entry->action == WEIR_CHAOS_PARTITION)
		reason = WEIR_DROP_CHAOS_PARTITION;
	else if (entry->action == WEIR_CHAOS_LOSS && chaos_lost(entry))
		reason = WEIR_DROP_CHAOS_LOSS;
	else
		return TC_ACT_OK;
	slot = entry->experiment;
	weir_count(&chaos_counters, slot, skb->len);
	note.self_identity = from->identity;
	note.peer_identity = ipcache_identity(pkt->family, pkt->dst);
	note.ifindex = skb->ifindex;
	return policy_drop(skb, pkt, &note, reason);
}

#endif
