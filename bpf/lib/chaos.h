/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Chaos on the pod path (see bpf/api/chaos.h): a local pod's packet whose
 * (source, destination) pair has a live entry is dropped (with its drop
 * reason), sent twice, corrupted, shaped or delayed as the entry says,
 * counted for its experiment, and reported as a flow event.
 */
#ifndef WEIR_LIB_CHAOS_H
#define WEIR_LIB_CHAOS_H

#include "common.h"
#include "parse.h"
#include "policy.h"
#include "chaos_counters.h"

#define WEIR_AF_INET6_FAMILY 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_key);
	__type(value, struct weir_chaos_entry);
} chaos_pairs SEC(".maps");

/* The sources that have pairs in chaos_pairs: a bit per hash of the source
 * address (chaos_source_bit; crates/weir-bpf's chaos module computes the
 * same). The agent sets a source's bit before it writes the source's first
 * pair and clears it once its last pair is gone, so a packet whose bit is
 * clear (no experiment, or only other pods') costs one array read: no hash
 * lookup, no clock. A collision only costs the lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_CHAOS_SOURCE_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} chaos_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_chaos_delay_line);
} chaos_delay_line SEC(".maps");

/* TCP resets: the (local, remote) address pairs whose established sockets
 * the agent's run of weir_chaos_reset ends, value the experiment's slot.
 * Filled for one run, then emptied. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_key);
	__type(value, __u32);
} chaos_resets SEC(".maps");

#include "chaos_dns.h"

/* Kept whole in BTF for the skeleton (userspace writes them). */
struct weir_chaos_delay_line weir_chaos_delay_line_layout = {};
struct weir_chaos_key weir_chaos_key_layout = {};
struct weir_chaos_entry weir_chaos_entry_layout = {};

/* Whether the packet's source may have pairs (its bit in chaos_sources). */
static __always_inline bool chaos_source_marked(const struct weir_pkt *pkt)
{
	__u32 hash = (pkt->src[0] ^ pkt->src[1] ^ pkt->src[2] ^ pkt->src[3]) * 0x9e3779b1u;
	__u32 bit = hash >> (32 - WEIR_CHAOS_SOURCE_BITS_LOG2);
	__u32 word = bit >> 6;
	__u64 *bits = bpf_map_lookup_elem(&chaos_sources, &word);

	return bits && (*bits & (1ULL << (bit & 63)));
}

/* True when this packet is hit. With correlation, a packet shares the
 * previous packet's fate with that chance, else draws afresh: the rate
 * stays the entry's probability (netem's correlated draw lowers it). */
static __always_inline bool chaos_hit(struct weir_chaos_entry *entry)
{
	bool hit;

	if (entry->correlation && bpf_get_prandom_u32() < entry->correlation)
		return entry->last_hit;
	hit = entry->probability == 0xffffffffu || bpf_get_prandom_u32() < entry->probability;
	if (entry->correlation)
		entry->last_hit = hit;
	return hit;
}

/* Sends a copy of the packet back into the veth it came from, marked so
 * that no fault touches it again: policy judges it and the pod path routes
 * it like the original. */
static __always_inline bool chaos_duplicate(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	long rc;

	skb->mark = mark | WEIR_CHAOS_COPY_MARK;
	rc = bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
	skb->mark = mark;
	return rc == 0;
}

/* The transport header's length and its checksum's offset in it, for the
 * protocols whose payload can be corrupted; false for the rest. */
static __always_inline bool chaos_transport(struct __sk_buff *skb, const struct weir_pkt *pkt, __u32 *header,
					    __u32 *check)
{
	__u8 doff;

	if (!pkt->has_l4 || pkt->is_later_fragment)
		return false;
	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, pkt->l4_off + 12, &doff, 1))
			return false;
		*header = (doff >> 4) * 4;
		*check = 16;
		return *header >= 20;
	case IPPROTO_UDP:
		*header = 8;
		*check = 6;
		return true;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		*header = 8;
		*check = 2;
		return true;
	}
	return false;
}

/* Flips one random bit of the transport payload (in a whole 16-bit word of
 * the checksum's; the IP datagram's length bounds it, not the frame's).
 * The checksum is repaired when the entry says so, else left as it was.
 * False when there was no payload to flip. */
static __always_inline bool chaos_corrupt(struct __sk_buff *skb, const struct weir_pkt *pkt,
					  const struct weir_chaos_entry *entry)
{
	__u32 header = 0, check = 0, end, start, words, off;
	__u16 ip_len, word, flipped;
	__u64 flags;

	if (!chaos_transport(skb, pkt, &header, &check))
		return false;
	if (pkt->family == 6) {
		if (bpf_skb_load_bytes(skb, pkt->l3_off + 4, &ip_len, 2))
			return false;
		end = pkt->l3_off + 40 + bpf_ntohs(ip_len);
	} else {
		if (bpf_skb_load_bytes(skb, pkt->l3_off + 2, &ip_len, 2))
			return false;
		end = pkt->l3_off + bpf_ntohs(ip_len);
	}
	if (end > skb->len)
		end = skb->len;
	start = pkt->l4_off + header;
	if (end < start + 2)
		return false;
	words = (end - start) / 2;
	off = start + 2 * (bpf_get_prandom_u32() % words);
	if (bpf_skb_load_bytes(skb, off, &word, 2))
		return false;
	flipped = word ^ bpf_htons(1 << (bpf_get_prandom_u32() & 15));
	if (entry->checksum == WEIR_CHAOS_CHECKSUM_FIXED) {
		/* The checksum's change cancels the word's: skb->csum stays. */
		if (bpf_skb_store_bytes(skb, off, &flipped, 2, 0))
			return false;
		flags = 2 | (pkt->l4_proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);
		bpf_l4_csum_replace(skb, pkt->l4_off + check, word, flipped, flags);
		return true;
	}
	/* skb->csum follows the data (CHECKSUM_COMPLETE), the header's
	 * checksum does not: a receiver that checks it sees the mismatch. */
	return !bpf_skb_store_bytes(skb, off, &flipped, 2, BPF_F_RECOMPUTE_CSUM);
}

/* Reports a packet a fault let through changed (sent twice, corrupted,
 * sent through a token bucket or to the delay line): a forwarded flow event
 * naming the experiment by its slot. The agent knows what the slot's fault
 * does; an event the full ring could not take is counted as drops' are. */
static __always_inline void chaos_touched(struct __sk_buff *skb, const struct weir_pkt *pkt,
					  const struct weir_endpoint *from, __u32 slot)
{
	struct flow_note note = {
		.direction = WEIR_POLICY_EGRESS,
		.verdict = WEIR_FLOW_FORWARDED,
		.match = WEIR_POLICY_MATCH_CHAOS,
		.rule = slot,
		.self_identity = from->identity,
		.peer_identity = ipcache_identity(pkt->family, pkt->dst),
		.ifindex = skb->ifindex,
		.netnsid_plus_one = from->netnsid_plus_one,
	};

	flow_post(skb, pkt, &note);
}

/* True for a packet to a ServiceChaos black hole (bpf/api/chaos.h), with
 * its experiment's slot. */
static __always_inline bool chaos_blackholed(const struct weir_pkt *pkt, __u32 *slot)
{
	if (pkt->family == 4) {
		if ((bpf_ntohl(pkt->dst[0]) & WEIR_CHAOS_BLACKHOLE4_MASK) != WEIR_CHAOS_BLACKHOLE4_NET)
			return false;
		*slot = bpf_ntohl(pkt->dst[0]) & 0xffff;
		return true;
	}
	if (pkt->dst[0] != bpf_htonl(WEIR_CHAOS_BLACKHOLE6_FIRST) || pkt->dst[1] || pkt->dst[2])
		return false;
	*slot = bpf_ntohl(pkt->dst[3]) & 0xffff;
	return true;
}

/*
 * Judges a packet the local pod `from` sends. TC_ACT_OK to go on (sent
 * twice or corrupted, perhaps), TC_ACT_SHOT when a fault dropped it
 * (counted, reported), TC_ACT_REDIRECT into the bandwidth shaper. A global function: verified once, apart from its
 * caller. It may change the packet: the caller holds no packet pointers.
 */
__noinline int chaos_check(struct __sk_buff *skb, const struct weir_pkt *pkt, const struct weir_endpoint *from)
{
	struct weir_chaos_key key = {};
	struct weir_chaos_entry *entry;
	struct weir_chaos_delay_line *line;
	struct flow_note note = {.direction = WEIR_POLICY_EGRESS, .match = WEIR_POLICY_MATCH_NONE};
	__u32 reason, slot, zero = 0;
	__u64 now;

	if (!skb || !pkt || !from)
		return TC_ACT_OK;
	if (skb->mark & (WEIR_CHAOS_COPY_MARK | WEIR_CHAOS_SHAPED_MARK)) {
		/* A duplicate's copy, or back from the shaper or the delay
		 * line: never hit twice. */
		skb->mark &= ~(WEIR_CHAOS_COPY_MARK | WEIR_CHAOS_SHAPED_MARK);
		return TC_ACT_OK;
	}
	if (chaos_blackholed(pkt, &slot)) {
		/* A ServiceChaos blackhole's connection (the socket load
		 * balancer sent it here): counted as a drop, not again for the
		 * experiment (its connect() was). */
		note.match = WEIR_POLICY_MATCH_CHAOS;
		note.rule = slot;
		note.self_identity = from->identity;
		note.netnsid_plus_one = from->netnsid_plus_one;
		note.ifindex = skb->ifindex;
		return policy_drop(skb, pkt, &note, WEIR_DROP_CHAOS_BLACKHOLE);
	}
	if (!chaos_source_marked(pkt))
		return TC_ACT_OK;
	key.family = pkt->family;
	__builtin_memcpy(key.src, pkt->src, sizeof(key.src));
	__builtin_memcpy(key.dst, pkt->dst, sizeof(key.dst));
	entry = bpf_map_lookup_elem(&chaos_pairs, &key);
	if (!entry)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	if (now >= entry->end_ns)
		return TC_ACT_OK;
	slot = entry->experiment;
	switch (entry->action) {
	case WEIR_CHAOS_PARTITION:
		reason = WEIR_DROP_CHAOS_PARTITION;
		break;
	case WEIR_CHAOS_LOSS:
		if (!chaos_hit(entry))
			return TC_ACT_OK;
		reason = WEIR_DROP_CHAOS_LOSS;
		break;
	case WEIR_CHAOS_DUPLICATE:
		if (chaos_hit(entry) && chaos_duplicate(skb)) {
			weir_count(&chaos_counters, slot, skb->len);
			chaos_touched(skb, pkt, from, slot);
		}
		return TC_ACT_OK;
	case WEIR_CHAOS_CORRUPT:
		if (chaos_hit(entry) && chaos_corrupt(skb, pkt, entry)) {
			weir_count(&chaos_counters, slot, skb->len);
			chaos_touched(skb, pkt, from, slot);
		}
		return TC_ACT_OK;
	case WEIR_CHAOS_BANDWIDTH:
		/* Through the sender's token bucket; the shaper's other end
		 * (chaos_shaper_return) hands it back to this veth. */
		weir_count(&chaos_counters, slot, skb->len);
		chaos_touched(skb, pkt, from, slot);
		skb->mark |= WEIR_CHAOS_SHAPED_MARK;
		skb->priority = entry->shaper_class;
		return bpf_redirect(entry->shaper_ifindex, 0);
	case WEIR_CHAOS_DELAY:
		/* To the agent's delay line, while an agent reads it. */
		line = bpf_map_lookup_elem(&chaos_delay_line, &zero);
		if (!line || !line->ifindex || now >= line->alive_until_ns)
			return TC_ACT_OK;
		weir_count(&chaos_counters, slot, skb->len);
		chaos_touched(skb, pkt, from, slot);
		skb->mark |= WEIR_CHAOS_DELAY_MARK;
		skb->priority = 0;
		return bpf_redirect(line->ifindex, 0);
	default:
		return TC_ACT_OK;
	}
	weir_count(&chaos_counters, slot, skb->len);
	note.match = WEIR_POLICY_MATCH_CHAOS;
	note.rule = slot;
	note.self_identity = from->identity;
	note.peer_identity = ipcache_identity(pkt->family, pkt->dst);
	note.netnsid_plus_one = from->netnsid_plus_one;
	note.ifindex = skb->ifindex;
	return policy_drop(skb, pkt, &note, reason);
}

/* Every fault on a packet the local pod `from` sends: its DNS faults
 * first (an answered or delayed query goes no further), then its pair's.
 * Two global functions side by side, not nested: their stacks add up.
 * Each is called only when it may have work, judged here inline: a call
 * costs more than these tests, and most packets meet no experiment. */
static __always_inline int chaos_judge(struct __sk_buff *skb, const struct weir_pkt *pkt,
				       const struct weir_endpoint *from)
{
	__u32 slot;
	int verdict;

	if (pkt->has_l4 && pkt->l4_proto == IPPROTO_UDP && pkt->dport == bpf_htons(WEIR_CHAOS_DNS_PORT)) {
		verdict = chaos_dns_check(skb, pkt, from);
		if (verdict != TC_ACT_OK)
			return verdict;
	}
	/* No mark to clear, no black hole, a source without pairs: nothing
	 * for chaos_check to do. */
	if (!(skb->mark & (WEIR_CHAOS_COPY_MARK | WEIR_CHAOS_SHAPED_MARK)) && !chaos_blackholed(pkt, &slot) &&
	    !chaos_source_marked(pkt))
		return TC_ACT_OK;
	return chaos_check(skb, pkt, from);
}

/* 6.5+; absent on older kernels, where sockets are found, not ended. */
extern int bpf_sock_destroy(struct sock_common *sk) __weak __ksym;

/*
 * iter/tcp, run by the agent in a pod's network namespace: an established
 * socket whose (local, remote) addresses are in chaos_resets is aborted
 * (bpf_sock_destroy: the peer gets a RST, the application ECONNABORTED).
 * Writes 'r' per socket reset, 'f' per socket found but not ended.
 */
static __always_inline int chaos_reset_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct weir_chaos_key key = {};
	char outcome = 'f';
	__u32 *slot;

	if (!skc || skc->skc_state != TCP_ESTABLISHED)
		return 0;
	if (skc->skc_family == WEIR_AF_INET6_FAMILY) {
		key.family = 6;
		BPF_CORE_READ_INTO(&key.src, skc, skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&key.dst, skc, skc_v6_daddr.in6_u.u6_addr32);
	} else {
		key.family = 4;
		key.src[0] = skc->skc_rcv_saddr;
		key.dst[0] = skc->skc_daddr;
	}
	slot = bpf_map_lookup_elem(&chaos_resets, &key);
	if (!slot)
		return 0;
	if (bpf_ksym_exists(bpf_sock_destroy) && !bpf_sock_destroy(skc)) {
		outcome = 'r';
		weir_count(&chaos_counters, *slot, 1);
	}
	bpf_seq_write(ctx->meta->seq, &outcome, 1);
	return 0;
}

/*
 * At tc ingress of the shaper veth's far end: a packet out of a token
 * bucket, or sent back by the delay line, goes back into the veth of the
 * pod that sent it, still marked,
 * where the node program judges and routes it (chaos_check lets it
 * through). Anything else the shaper carries (its own IPv6 chatter) is
 * left to the stack.
 */
static __always_inline int chaos_shaper_return(struct __sk_buff *skb, const struct weir_pkt *pkt,
					       const struct weir_endpoint *from)
{
	struct flow_note note = {.direction = WEIR_POLICY_EGRESS, .match = WEIR_POLICY_MATCH_NONE};

	/* The delay line's packet: the agent read it on the way out and
	 * holds it; this copy ends here. */
	if (skb->mark & WEIR_CHAOS_DELAY_MARK)
		return TC_ACT_SHOT;
	if (!(skb->mark & WEIR_CHAOS_SHAPED_MARK))
		return TC_ACT_OK;
	if (from)
		return bpf_redirect(from->ifindex, BPF_F_INGRESS);
	note.ifindex = skb->ifindex;
	return policy_drop(skb, pkt, &note, WEIR_DROP_CHAOS_SHAPER_ORPHAN);
}

#endif
