/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS faults on the pod path (see bpf/api/chaos_dns.h): a local pod's DNS
 * query over UDP whose name an entry's patterns match is turned into the
 * answer, in place (QR and RA set, the entry's response code, no records,
 * addresses, ports and MACs swapped, lengths and checksums rewritten), and
 * sent back into the pod; or sent to the delay line, which holds it before
 * it goes on to its server. Included by chaos.h, after its maps.
 */
#ifndef WEIR_LIB_CHAOS_DNS_H
#define WEIR_LIB_CHAOS_DNS_H

#include "common.h"
#include "parse.h"
#include "policy.h"
#include "chaos_counters.h"

#define WEIR_DNS_HEADER 12
#define WEIR_UDP_HEADER 8
/* The query's name as read from the packet, then made dotted and lower
 * case in place: one byte more than any name, and room past it so that
 * name[1 + j] stays inside for any j below WEIR_CHAOS_DNS_NAME_BYTES. */
#define WEIR_DNS_NAME_READ 256
/* The answer's UDP segment (8 + 12 + name + 4, at most 280 bytes), padded
 * to whole words for bpf_csum_diff. */
#define WEIR_DNS_SEGMENT 288

/* Per CPU, off the stack (the tc program, chaos_check and this share 512
 * bytes of it). */
struct chaos_dns_scratch {
	__u8 name[2 * WEIR_CHAOS_DNS_NAME_BYTES];
	__u8 segment[WEIR_DNS_SEGMENT];
	__be32 pseudo[10];
	__u8 swap[2][16];
	struct weir_chaos_key key;
	struct flow_note note;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_key);
	__type(value, struct weir_chaos_dns);
} chaos_dns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chaos_dns_scratch);
} chaos_dns_scratch SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace writes it). */
struct weir_chaos_dns weir_chaos_dns_layout = {};

struct chaos_dns_name_walk {
	__u8 *name;
	__u32 avail; /* bytes read into name */
	__u32 next;  /* where the next label's length byte is */
	__u32 wire;  /* the name's wire length, once its end is found */
};

/* One byte of the name (bpf_loop's callback: verified once). */
static long chaos_dns_name_step(__u64 index, void *ctx)
{
	struct chaos_dns_name_walk *walk = ctx;
	/* Masked, not only compared: the verifier sees the index's bound. */
	__u32 i = index & (WEIR_DNS_NAME_READ - 1);
	__u8 c;

	if (index >= WEIR_DNS_NAME_READ || i >= walk->avail)
		return 1;
	c = walk->name[i];
	if (i == walk->next) {
		if (c == 0) {
			walk->wire = i + 1;
			return 1;
		}
		if (c > 63)
			return 1; /* a pointer, or not a label */
		walk->next = i + c + 1;
		walk->name[i] = '.';
	} else if (c >= 'A' && c <= 'Z') {
		walk->name[i] = c + ('a' - 'A');
	}
	return 0;
}

/* Reads the query's name (after the 12-byte header) into name[0..],
 * rewritten in place as its dotted, lower-case text at name[1..]: each
 * label's length byte becomes a dot. Returns the wire length of the name
 * (its final zero byte included), or 0 when it is not a plain name
 * (compressed, cut short, longer than a name may be). */
static __always_inline __u32 chaos_dns_name(struct __sk_buff *skb, __u32 name_off, __u8 *name)
{
	struct chaos_dns_name_walk walk = {.name = name};
	__u32 avail;

	if (skb->len <= name_off)
		return 0;
	avail = skb->len - name_off;
	if (avail > WEIR_DNS_NAME_READ)
		avail = WEIR_DNS_NAME_READ;
	/* 1 to 256, in a form the verifier follows. */
	avail = ((avail - 1) & (WEIR_DNS_NAME_READ - 1)) + 1;
	if (bpf_skb_load_bytes(skb, name_off, name, avail))
		return 0;
	walk.avail = avail;
	bpf_loop(WEIR_DNS_NAME_READ, chaos_dns_name_step, &walk, 0);
	return walk.wire;
}

struct chaos_dns_match_walk {
	const struct weir_chaos_dns *entry;
	const __u8 *name;
	__u32 len;   /* of the dotted name, at name[1..] */
	__u32 alive; /* a bit per pattern that still matches */
};

/* One character of every pattern at once (bpf_loop's callback). */
static long chaos_dns_match_step(__u64 index, void *ctx)
{
	struct chaos_dns_match_walk *walk = ctx;
	const struct weir_chaos_dns_pattern *p;
	__u32 j = index & (WEIR_CHAOS_DNS_NAME_BYTES - 1), i;
	__u8 c, t;

	if (index >= WEIR_CHAOS_DNS_NAME_BYTES || !walk->alive)
		return 1;
	c = walk->name[1 + j];
	for (i = 0; i < WEIR_CHAOS_DNS_MAX_PATTERNS; i++) {
		p = &walk->entry->pattern[i];
		if (!(walk->alive & (1u << i)) || j >= p->len)
			continue;
		t = p->text[j];
		if (t != '?' && t != c)
			walk->alive &= ~(1u << i);
	}
	return 0;
}

/* Whether the dotted name at name[1..1 + len) matches one of the entry's
 * patterns (any name when it has none). */
static __always_inline bool chaos_dns_matches(const struct weir_chaos_dns *entry, const __u8 *name, __u32 len)
{
	struct chaos_dns_match_walk walk = {.entry = entry, .name = name, .len = len};
	const struct weir_chaos_dns_pattern *p;
	__u32 i;

	if (entry->patterns == 0)
		return true;
	/* First the patterns whose length can fit the name. */
	for (i = 0; i < WEIR_CHAOS_DNS_MAX_PATTERNS; i++) {
		p = &entry->pattern[i];
		if (i < entry->patterns && p->len < WEIR_CHAOS_DNS_NAME_BYTES && (p->wildcard ? len >= p->len : len == p->len))
			walk.alive |= 1u << i;
	}
	if (walk.alive)
		bpf_loop(len < WEIR_CHAOS_DNS_NAME_BYTES ? len : WEIR_CHAOS_DNS_NAME_BYTES, chaos_dns_match_step, &walk, 0);
	return walk.alive != 0;
}

/* Swaps `len` bytes (a constant, at most 16) at `a` with as many at `b`:
 * addresses, ports, MACs. */
static __always_inline bool chaos_dns_swap(struct __sk_buff *skb, __u32 a, __u32 b, __u32 len,
					   struct chaos_dns_scratch *scratch)
{
	__u8 *x = scratch->swap[0], *y = scratch->swap[1];

	if (len > 16 || bpf_skb_load_bytes(skb, a, x, len) || bpf_skb_load_bytes(skb, b, y, len))
		return false;
	return !bpf_skb_store_bytes(skb, a, y, len, BPF_F_RECOMPUTE_CSUM) &&
	       !bpf_skb_store_bytes(skb, b, x, len, BPF_F_RECOMPUTE_CSUM);
}

static __always_inline __u16 chaos_dns_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * Turns the query into its answer in place: `wire` is its name's wire
 * length; the answer keeps the header's ID, opcode and RD, sets QR and RA
 * and the response code, and holds the question alone (anything after it,
 * an EDNS record, is cut). False when the packet could not be rewritten
 * (it is then dropped: half rewritten, it can go nowhere).
 */
static __always_inline bool chaos_dns_answer(struct __sk_buff *skb, const struct weir_pkt *pkt, __u32 wire, __u8 rcode,
					     struct chaos_dns_scratch *scratch)
{
	__u32 dns_off = pkt->l4_off + WEIR_UDP_HEADER, udp_len, words, i;
	__u16 flags, counts[3] = {}, be_len, old_len, new_len;
	__u8 *segment = scratch->segment;
	__s64 sum;

	udp_len = WEIR_UDP_HEADER + WEIR_DNS_HEADER + wire + 4;
	if (udp_len > WEIR_DNS_SEGMENT - 8)
		return false;
	/* Ethernet, IP and UDP: from where it came, back. */
	if (!chaos_dns_swap(skb, 0, 6, 6, scratch))
		return false;
	if (pkt->family == 6) {
		if (!chaos_dns_swap(skb, pkt->l3_off + 8, pkt->l3_off + 24, 16, scratch))
			return false;
	} else if (!chaos_dns_swap(skb, pkt->l3_off + 12, pkt->l3_off + 16, 4, scratch)) {
		return false;
	}
	if (!chaos_dns_swap(skb, pkt->l4_off, pkt->l4_off + 2, 2, scratch))
		return false;
	/* QR, the opcode and RD kept, AA and TC cleared; RA and the rcode. */
	if (bpf_skb_load_bytes(skb, dns_off + 2, &flags, 2))
		return false;
	flags = bpf_htons(0x8000 | (bpf_ntohs(flags) & 0x7900) | 0x0080 | (rcode & 0xf));
	if (bpf_skb_store_bytes(skb, dns_off + 2, &flags, 2, BPF_F_RECOMPUTE_CSUM) ||
	    bpf_skb_store_bytes(skb, dns_off + 6, counts, sizeof(counts), BPF_F_RECOMPUTE_CSUM))
		return false;
	/* The question alone. */
	if (skb->len > pkt->l4_off + udp_len && bpf_skb_change_tail(skb, pkt->l4_off + udp_len, 0))
		return false;
	be_len = bpf_htons(udp_len);
	if (bpf_skb_store_bytes(skb, pkt->l4_off + 4, &be_len, 2, BPF_F_RECOMPUTE_CSUM))
		return false;
	if (pkt->family == 6) {
		new_len = bpf_htons(pkt->l4_off - pkt->l3_off - 40 + udp_len);
		if (bpf_skb_store_bytes(skb, pkt->l3_off + 4, &new_len, 2, BPF_F_RECOMPUTE_CSUM))
			return false;
	} else {
		if (bpf_skb_load_bytes(skb, pkt->l3_off + 2, &old_len, 2))
			return false;
		new_len = bpf_htons(pkt->l4_off - pkt->l3_off + udp_len);
		if (bpf_skb_store_bytes(skb, pkt->l3_off + 2, &new_len, 2, BPF_F_RECOMPUTE_CSUM) ||
		    bpf_l3_csum_replace(skb, pkt->l3_off + 10, old_len, new_len, 2))
			return false;
	}
	/* The UDP checksum, whole: over the pseudo header (the addresses as
	 * they now are: swapped) and the segment, its checksum field zero. */
	__builtin_memset(scratch->pseudo, 0, sizeof(scratch->pseudo));
	if (pkt->family == 6) {
		__builtin_memcpy(&scratch->pseudo[0], pkt->dst, 16);
		__builtin_memcpy(&scratch->pseudo[4], pkt->src, 16);
		scratch->pseudo[8] = bpf_htonl(udp_len);
		scratch->pseudo[9] = bpf_htonl(IPPROTO_UDP);
		sum = bpf_csum_diff(0, 0, scratch->pseudo, 40, 0);
	} else {
		scratch->pseudo[0] = pkt->dst[0];
		scratch->pseudo[1] = pkt->src[0];
		scratch->pseudo[2] = bpf_htonl((IPPROTO_UDP << 16) | udp_len);
		sum = bpf_csum_diff(0, 0, scratch->pseudo, 12, 0);
	}
	if (sum < 0)
		return false;
	for (i = 0; i < WEIR_DNS_SEGMENT; i += 4)
		*(__u32 *)&segment[i] = 0;
	if (bpf_skb_load_bytes(skb, pkt->l4_off, segment, udp_len))
		return false;
	segment[6] = 0;
	segment[7] = 0;
	words = (udp_len + 3) & ~3u;
	if (words > WEIR_DNS_SEGMENT)
		return false;
	sum = bpf_csum_diff(0, 0, (__be32 *)segment, words, (__wsum)sum);
	if (sum < 0)
		return false;
	be_len = chaos_dns_fold(sum);
	if (be_len == 0)
		be_len = 0xffff;
	return !bpf_skb_store_bytes(skb, pkt->l4_off + 6, &be_len, 2, BPF_F_RECOMPUTE_CSUM);
}

/*
 * Judges a local pod's packet against its DNS faults. TC_ACT_OK when no
 * fault applies (the pair faults judge it next), a redirect when it was
 * answered (back into the pod) or delayed (to the delay line), TC_ACT_SHOT
 * when the answer could not be made. A global function: verified once.
 */
__noinline int chaos_dns_check(struct __sk_buff *skb, const struct weir_pkt *pkt, const struct weir_endpoint *from)
{
	struct weir_chaos_dns *entry;
	struct weir_chaos_delay_line *line;
	struct chaos_dns_scratch *scratch;
	__u32 zero = 0, wire, len, dns_off;
	__u16 header[3];
	__u64 now;
	struct flow_note *note;

	if (!skb || !pkt || !from)
		return TC_ACT_OK;
	/* A duplicate's copy, or back from the delay line: chaos_check
	 * clears the mark and lets it go. */
	if (skb->mark & (WEIR_CHAOS_COPY_MARK | WEIR_CHAOS_SHAPED_MARK))
		return TC_ACT_OK;
	if (!pkt->has_l4 || pkt->is_fragment || pkt->l4_proto != IPPROTO_UDP ||
	    pkt->dport != bpf_htons(WEIR_CHAOS_DNS_PORT))
		return TC_ACT_OK;
	scratch = bpf_map_lookup_elem(&chaos_dns_scratch, &zero);
	if (!scratch)
		return TC_ACT_OK;
	__builtin_memset(&scratch->key, 0, sizeof(scratch->key));
	scratch->key.family = pkt->family;
	__builtin_memcpy(scratch->key.src, pkt->src, sizeof(scratch->key.src));
	entry = bpf_map_lookup_elem(&chaos_dns, &scratch->key);
	now = bpf_ktime_get_ns();
	if (!entry || now >= entry->end_ns)
		return TC_ACT_OK;
	/* A standard query (QR 0, opcode 0) with one question. */
	dns_off = pkt->l4_off + WEIR_UDP_HEADER;
	if (bpf_skb_load_bytes(skb, dns_off + 2, header, sizeof(header)))
		return TC_ACT_OK;
	if ((bpf_ntohs(header[0]) & 0xf800) || bpf_ntohs(header[1]) != 1)
		return TC_ACT_OK;
	wire = chaos_dns_name(skb, dns_off + WEIR_DNS_HEADER, scratch->name);
	if (!wire || dns_off + WEIR_DNS_HEADER + wire + 4 > skb->len)
		return TC_ACT_OK;
	len = wire > 1 ? wire - 2 : 0;
	if (!chaos_dns_matches(entry, scratch->name, len))
		return TC_ACT_OK;
	if (entry->probability != 0xffffffffu && bpf_get_prandom_u32() >= entry->probability)
		return TC_ACT_OK;
	if (!entry->rcode) {
		/* To the agent's delay line, while an agent reads it. */
		line = bpf_map_lookup_elem(&chaos_delay_line, &zero);
		if (!line || !line->ifindex || now >= line->alive_until_ns)
			return TC_ACT_OK;
		weir_count(&chaos_counters, entry->experiment, skb->len);
		skb->mark |= WEIR_CHAOS_DELAY_MARK;
		skb->priority = 0;
		return bpf_redirect(line->ifindex, 0);
	}
	/* The query ends here: a flow event names the experiment. */
	weir_count(&chaos_counters, entry->experiment, skb->len);
	note = &scratch->note;
	__builtin_memset(note, 0, sizeof(*note));
	note->direction = WEIR_POLICY_EGRESS;
	note->match = WEIR_POLICY_MATCH_CHAOS;
	note->verdict = WEIR_FLOW_DROPPED;
	note->drop_reason = WEIR_DROP_CHAOS_DNS_ANSWERED;
	note->rule = entry->experiment;
	note->self_identity = from->identity;
	note->peer_identity = ipcache_identity(pkt->family, pkt->dst);
	note->ifindex = skb->ifindex;
	weir_count(&pod_drops, WEIR_DROP_CHAOS_DNS_ANSWERED, skb->len);
	note->netnsid_plus_one = from->netnsid_plus_one;
	flow_post(skb, pkt, note);
	if (!chaos_dns_answer(skb, pkt, wire, entry->rcode, scratch))
		return TC_ACT_SHOT;
	return bpf_redirect_peer(from->ifindex, 0);
}

#endif
