/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP packet filter: shape index, tuple-space lookup, residual checks, actions.
 * See api/filter.h for the data model, the generation flip and precedence.
 *
 * Every map here is pinned by the agent and written only by it
 * (weir_bpf::filter); the program only reads rules and counts.
 */
#ifndef WEIR_LIB_FILTER_H
#define WEIR_LIB_FILTER_H

#include "common.h"
#include "parse.h"
#include "traffic.h"

/* Set by the loader of a simulation copy: record each decision. */
const volatile __u32 weir_filter_record_decision = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_filter_config);
} filter_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_FILTER_MAX_SHAPES);
	__type(key, __u32);
	__type(value, struct weir_filter_shape);
} filter_shapes SEC(".maps");

/* Masked packet key -> slot + 1 of the first rule with that key. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_FILTER_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_filter_key);
	__type(value, __u32);
} filter_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_FILTER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct weir_filter_rule);
} filter_rules SEC(".maps");

/* The shape index (see api/filter.h): address prefixes -> shapes. */
#define WEIR_FILTER_PREFIX_INDEX(name, key_type)          \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);      \
		__uint(max_entries, WEIR_FILTER_MAX_RULES); \
		__uint(map_flags, BPF_F_NO_PREALLOC);     \
		__type(key, key_type);                    \
		__type(value, __u32);                     \
	} name SEC(".maps")

WEIR_FILTER_PREFIX_INDEX(filter_src4, struct weir_filter_prefix4);
WEIR_FILTER_PREFIX_INDEX(filter_src6, struct weir_filter_prefix6);
WEIR_FILTER_PREFIX_INDEX(filter_dst4, struct weir_filter_prefix4);
WEIR_FILTER_PREFIX_INDEX(filter_dst6, struct weir_filter_prefix6);

/* The shape index: IPv4 addresses' /16 blocks (top 16 bits) -> shapes, a
 * coarse first pass that costs no more than an array read. */
#define WEIR_FILTER_BLOCK_INDEX(name)              \
	struct {                                   \
		__uint(type, BPF_MAP_TYPE_ARRAY);  \
		__uint(max_entries, 65536);        \
		__type(key, __u32);                \
		__type(value, __u32);              \
	} name SEC(".maps")

WEIR_FILTER_BLOCK_INDEX(filter_src4_blocks);
WEIR_FILTER_BLOCK_INDEX(filter_dst4_blocks);

/* The shape index: ports (host order) and protocols -> shapes. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct weir_filter_port_shapes);
} filter_port_shapes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} filter_proto_shapes SEC(".maps");

/* Packets and bytes matched, per rule slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_FILTER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct weir_counter);
} filter_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_FILTER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct weir_filter_bucket);
} filter_buckets SEC(".maps");

/* Per-source buckets. A plain hash: spin locks are not allowed in LRU maps.
 * The agent removes idle entries; when it is full, new sources fail open. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_filter_source_key);
	__type(value, struct weir_filter_bucket);
} filter_source_buckets SEC(".maps");

/* Packets dropped by the node datapath, by enum weir_drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct weir_counter);
} drops SEC(".maps");

/* The expression program's verdict for the packet it tail-calls with. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_filter_expr_result);
} filter_expr_result SEC(".maps");

/* Slot 0: this object's XDP program, the expression program's tail call target. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} filter_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} filter_events SEC(".maps");

/* Never read or written: it puts struct weir_filter_event into the object's
 * BTF, from which the Rust side's event type is generated. */
struct weir_filter_event weir_filter_event_layout = {};

/* Trace events that found the ring buffer full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filter_events_lost SEC(".maps");

/* The last decision (slot, verdict); written only by a simulation copy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filter_decision SEC(".maps");

static __always_inline int weir_in_range(__u32 v, __u32 lo, __u32 hi)
{
	return v >= lo && v <= hi;
}

static __always_inline int weir_filter_bytes_match(struct xdp_md *ctx, const struct weir_filter_bytes *b,
						   const struct weir_pkt *pkt)
{
	__u8 buf[4] = {};
	__u32 off, n = b->len, value = 0;
	int k;

	if (!n)
		return 1;
	if (n > 4 || (b->base && !pkt->has_l4))
		return 0;
	/* Spelled so older verifiers (6.1) also see 1..4 (the helper rejects zero). */
	n = ((n - 1) & 3) + 1;
	off = (b->base ? pkt->l4_off : pkt->l3_off) + b->offset;
	/* The helper bounds-checks against the packet; out of range never matches. */
	if (bpf_xdp_load_bytes(ctx, off, buf, n))
		return 0;
#pragma unroll
	for (k = 0; k < 4; k++)
		if (k < n)
			value = (value << 8) | buf[k];
	return (value & b->mask) == b->value;
}

/* The checks a rule makes beyond its key. A global function, verified once:
 * inlined into every step of a rule chain, its branches multiply the
 * verifier's states past its limit on newer kernels. */
__noinline int weir_filter_residual(struct xdp_md *ctx, const struct weir_filter_rule *r, const struct weir_pkt *pkt,
				    __u32 len)
{
	__u16 c;

	/* A global function's pointers may be NULL as far as the verifier knows. */
	if (!ctx || !r || !pkt)
		return 0;
	c = r->checks;
	if (c & WEIR_CHECK_EXPRESSION)
		return 0;
	if ((c & (WEIR_CHECK_SPORT_RANGE | WEIR_CHECK_DPORT_RANGE | WEIR_CHECK_TCP_FLAGS | WEIR_CHECK_ICMP_TYPE |
		  WEIR_CHECK_ICMP_CODE)) && !pkt->has_l4)
		return 0;
	if ((c & WEIR_CHECK_SPORT_RANGE) && !weir_in_range(bpf_ntohs(pkt->sport), r->sport_lo, r->sport_hi))
		return 0;
	if ((c & WEIR_CHECK_DPORT_RANGE) && !weir_in_range(bpf_ntohs(pkt->dport), r->dport_lo, r->dport_hi))
		return 0;
	if ((c & WEIR_CHECK_TCP_FLAGS) && (pkt->tcp_flags & r->tcp_flags_mask) != r->tcp_flags_value)
		return 0;
	if ((c & WEIR_CHECK_ICMP_TYPE) && pkt->icmp_type != r->icmp_type)
		return 0;
	if ((c & WEIR_CHECK_ICMP_CODE) && pkt->icmp_code != r->icmp_code)
		return 0;
	if ((c & WEIR_CHECK_LENGTH) && !weir_in_range(len, r->len_min, r->len_max))
		return 0;
	if ((c & WEIR_CHECK_FRAGMENT) && pkt->is_fragment != r->fragment)
		return 0;
	if ((c & WEIR_CHECK_IP_OPTIONS) && (pkt->family != 4 || pkt->ip_options != r->ip_options))
		return 0;
	if ((c & WEIR_CHECK_TTL) && (!pkt->family || !weir_in_range(pkt->ttl, r->ttl_min, r->ttl_max)))
		return 0;
	if (c & WEIR_CHECK_BYTES) {
		if (!weir_filter_bytes_match(ctx, &r->bytes[0], pkt))
			return 0;
		if (!weir_filter_bytes_match(ctx, &r->bytes[1], pkt))
			return 0;
	}
	return 1;
}

/* Whether a rule of `rank` beats the best so far (ranks are unique). */
static __always_inline int weir_filter_better(__u64 rank, __u64 best_rank)
{
	return rank < best_rank;
}

/* State of one packet's walk over its candidate shapes. */
struct weir_filter_walk {
	struct xdp_md *ctx;
	const struct weir_pkt *pkt;
	__u32 todo;  /* candidate shapes not yet looked up */
	__u32 len;
	__u32 gen_bit;
	__u32 best;
	__u64 best_rank;
	/* The rule at `best`, so the verdict needs no second read of it. */
	struct weir_filter_rule *best_rule;
};

/* The bit number of `bit`, a power of two. Spelled with popcount: clang
 * turns a count of trailing zeros into a table in .rodata, and the barrier
 * keeps it from seeing one here. */
static __always_inline __u32 weir_bit_number(__u32 bit)
{
	bit -= 1;
	asm volatile("" : "+r"(bit));
	return __builtin_popcount(bit);
}

/* The lowest candidate shape: look up the packet's masked key, then walk the rules sharing it. */
static __always_inline long weir_filter_step(struct weir_filter_walk *walk)
{
	const struct weir_pkt *pkt = walk->pkt;
	struct weir_filter_key key = {};
	struct weir_filter_shape *shape;
	__u32 i, j, w, *head, next, bit;

	bit = walk->todo & -walk->todo;
	if (!bit)
		return 1;
	walk->todo &= ~bit;
	i = weir_bit_number(bit);
	if (i >= WEIR_FILTER_MAX_SHAPES)
		return 1;
	shape = bpf_map_lookup_elem(&filter_shapes, &i);
	if (!shape || (shape->family && shape->family != pkt->family) ||
	    !weir_filter_better(shape->best_rank, walk->best_rank))
		return 0;
	if ((shape->fields & (WEIR_SHAPE_SPORT | WEIR_SHAPE_DPORT)) &&
	    (!pkt->has_l4 || (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP)))
		return 0;
	key.shape = i;
	key.family = shape->family;
	if (shape->fields & WEIR_SHAPE_IFINDEX)
		key.ifindex = walk->ctx->ingress_ifindex;
	if (shape->fields & WEIR_SHAPE_PROTO)
		key.proto = pkt->l4_proto;
	if (shape->fields & WEIR_SHAPE_SPORT)
		key.sport = pkt->sport;
	if (shape->fields & WEIR_SHAPE_DPORT)
		key.dport = pkt->dport;
	/* An IPv4 packet's address words past the first are zero, as the key's are. */
	if (pkt->family == 4) {
		key.src[0] = pkt->src[0] & shape->src_mask[0];
		key.dst[0] = pkt->dst[0] & shape->dst_mask[0];
	} else {
#pragma unroll
		for (w = 0; w < 4; w++) {
			key.src[w] = pkt->src[w] & shape->src_mask[w];
			key.dst[w] = pkt->dst[w] & shape->dst_mask[w];
		}
	}
	head = bpf_map_lookup_elem(&filter_keys, &key);
	if (!head)
		return 0;
	next = *head;
#pragma unroll
	for (j = 0; j < WEIR_FILTER_MAX_CHAIN; j++) {
		__u32 slot = next - 1;
		struct weir_filter_rule *r;

		if (!next)
			break;
		r = bpf_map_lookup_elem(&filter_rules, &slot);
		if (!r)
			break;
		next = r->next;
		if (!(r->generations & walk->gen_bit) || !weir_filter_better(r->rank, walk->best_rank))
			continue;
		/* Most rules are their key alone: no call for them. */
		if (r->checks && !weir_filter_residual(walk->ctx, r, pkt, walk->len))
			continue;
		walk->best = slot;
		walk->best_rank = r->rank;
		walk->best_rule = r;
	}
	return 0;
}

/* weir_filter_step as bpf_loop's callback, for candidates past the second. */
static long weir_filter_shape_step(__u64 index, void *arg)
{
	return weir_filter_step(arg);
}

/* The shapes with a rule for the packet's address in an address index. */
static __always_inline __u32 weir_filter_prefix_shapes(void *index4, void *index6, const struct weir_pkt *pkt,
						       const __be32 *addr)
{
	__u32 *shapes = NULL;

	if (pkt->family == 4) {
		struct weir_filter_prefix4 key = { .prefixlen = 32 };

		__builtin_memcpy(key.addr, addr, sizeof(key.addr));
		shapes = bpf_map_lookup_elem(index4, &key);
	} else if (pkt->family == 6) {
		struct weir_filter_prefix6 key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, addr, sizeof(key.addr));
		shapes = bpf_map_lookup_elem(index6, &key);
	}
	return shapes ? *shapes : 0;
}

/* The shapes with a rule for an IPv4 address's /16 block in a block index. */
static __always_inline __u32 weir_filter_block_shapes(void *index, const struct weir_pkt *pkt, __be32 addr)
{
	__u32 block = bpf_ntohl(addr) >> 16, *shapes;

	if (pkt->family != 4)
		return ~0u;
	shapes = bpf_map_lookup_elem(index, &block);
	return shapes ? *shapes : 0;
}

/* The shapes of `shapes` that some rule could match the packet in: each
 * field's index is asked only while a remaining shape constrains that field;
 * arrays first, then, if more than two shapes remain (a trie walk costs about
 * two hash lookups), the address tries. */
static __always_inline __u32 weir_filter_candidates(const struct weir_filter_config *cfg, __u32 shapes,
						    const struct weir_pkt *pkt)
{
	__u32 proto = pkt->l4_proto, sport = bpf_ntohs(pkt->sport), dport = bpf_ntohs(pkt->dport);
	struct weir_filter_port_shapes *ports;
	__u32 *by_proto;

	if (shapes & ~cfg->any_src)
		shapes &= cfg->any_src | weir_filter_block_shapes(&filter_src4_blocks, pkt, pkt->src[0]);
	if (shapes & ~cfg->any_dst)
		shapes &= cfg->any_dst | weir_filter_block_shapes(&filter_dst4_blocks, pkt, pkt->dst[0]);
	if (shapes & ~cfg->any_proto) {
		by_proto = bpf_map_lookup_elem(&filter_proto_shapes, &proto);
		shapes &= cfg->any_proto | (by_proto ? *by_proto : 0);
	}
	if (shapes & ~cfg->any_sport) {
		ports = bpf_map_lookup_elem(&filter_port_shapes, &sport);
		shapes &= cfg->any_sport | (ports ? ports->sport : 0);
	}
	if (shapes & ~cfg->any_dport) {
		ports = bpf_map_lookup_elem(&filter_port_shapes, &dport);
		shapes &= cfg->any_dport | (ports ? ports->dport : 0);
	}
	if (__builtin_popcount(shapes) <= 2)
		return shapes;
	if (shapes & ~cfg->any_src)
		shapes &= cfg->any_src | weir_filter_prefix_shapes(&filter_src4, &filter_src6, pkt, pkt->src);
	if (shapes & ~cfg->any_dst)
		shapes &= cfg->any_dst | weir_filter_prefix_shapes(&filter_dst4, &filter_dst6, pkt, pkt->dst);
	return shapes;
}

/* Finds the winning map-backed rule; returns its slot or WEIR_FILTER_NO_RULE,
 * with its rank and the rule itself (NULL when none). */
static __always_inline __u32 weir_filter_lookup(struct xdp_md *ctx, const struct weir_filter_config *cfg,
						const struct weir_pkt *pkt, __u32 len, __u64 *best_rank,
						struct weir_filter_rule **best_rule)
{
	__u32 gen = cfg->active & 1;
	struct weir_filter_walk walk = {
		.ctx = ctx,
		.pkt = pkt,
		.todo = 0,
		.len = len,
		.gen_bit = 1u << gen,
		.best = WEIR_FILTER_NO_RULE,
		.best_rank = ~0ULL,
		.best_rule = NULL,
	};

	if (cfg->shapes[gen])
		walk.todo = weir_filter_candidates(cfg, cfg->shapes[gen], pkt);
	/* One hash lookup per candidate shape, lowest id first. The first two
	 * are inlined: most packets have one or two candidates at most, and a
	 * call (bpf_loop's callback included) costs a return, which the
	 * kernel's return-stack mitigations make dear; the rest go to bpf_loop. */
	if (walk.todo)
		weir_filter_step(&walk);
	if (walk.todo)
		weir_filter_step(&walk);
	if (walk.todo)
		bpf_loop(__builtin_popcount(walk.todo), weir_filter_shape_step, &walk, 0);
	*best_rank = walk.best_rank;
	*best_rule = walk.best_rule;
	return walk.best;
}

static __always_inline int weir_filter_take_token(struct weir_filter_bucket *b, const struct weir_filter_rule *r)
{
	__u64 now = bpf_ktime_get_ns(), tokens;
	int ok;

	bpf_spin_lock(&b->lock);
	tokens = b->last_ns ? b->tokens_ns + (now - b->last_ns) : r->bucket_ns;
	if (tokens > r->bucket_ns)
		tokens = r->bucket_ns;
	b->last_ns = now;
	ok = tokens >= r->token_cost_ns;
	if (ok)
		tokens -= r->token_cost_ns;
	b->tokens_ns = tokens;
	bpf_spin_unlock(&b->lock);
	return ok;
}

static __always_inline int weir_filter_under_rate(__u32 slot, const struct weir_filter_rule *r, const struct weir_pkt *pkt)
{
	struct weir_filter_bucket *b;

	if (r->per_source) {
		struct weir_filter_source_key key = { .slot = slot, .family = pkt->family };
		struct weir_filter_bucket fresh = {};

		__builtin_memcpy(key.addr, pkt->src, sizeof(key.addr));
		b = bpf_map_lookup_elem(&filter_source_buckets, &key);
		if (!b) {
			bpf_map_update_elem(&filter_source_buckets, &key, &fresh, BPF_NOEXIST);
			b = bpf_map_lookup_elem(&filter_source_buckets, &key);
		}
	} else {
		b = bpf_map_lookup_elem(&filter_buckets, &slot);
	}
	/* No bucket (the LRU could not hold one): fail open rather than drop good traffic. */
	return b ? weir_filter_take_token(b, r) : 1;
}

static __always_inline void weir_filter_trace(struct xdp_md *ctx, const struct weir_filter_config *cfg, __u32 slot,
					      __u8 action, __u8 verdict, __u32 len)
{
	struct weir_filter_event *e;
	__u32 captured = len < WEIR_FILTER_CAPTURE_BYTES ? len : WEIR_FILTER_CAPTURE_BYTES;
	__u32 zero = 0;

	if (!cfg->trace || (cfg->trace_every > 1 && bpf_get_prandom_u32() % cfg->trace_every))
		return;
	e = bpf_ringbuf_reserve(&filter_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&filter_events_lost, &zero);

		if (lost)
			(*lost)++;
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	e->slot = slot;
	e->ifindex = ctx->ingress_ifindex;
	e->length = len;
	e->action = action;
	e->verdict = verdict;
	e->captured = 0;
	if (captured > 0) {
		/* Spelled so the verifier sees 1..128 (the helper rejects zero). */
		captured = ((captured - 1) & (WEIR_FILTER_CAPTURE_BYTES - 1)) + 1;
		if (!bpf_xdp_load_bytes(ctx, 0, e->data, captured))
			e->captured = captured;
	}
	bpf_ringbuf_submit(e, 0);
}

/* Decides a packet's fate. `expr_slot` is the expression program's match, if any. */
static __always_inline int weir_filter(struct xdp_md *ctx, const struct weir_pkt *pkt, __u32 len, __u32 expr_slot)
{
	__u32 zero = 0, slot;
	__u64 best_rank = ~0ULL;
	struct weir_filter_config *cfg = bpf_map_lookup_elem(&filter_config, &zero);
	struct weir_filter_rule *r = NULL;
	int verdict = XDP_PASS;

	if (!cfg)
		return XDP_PASS;
	slot = weir_filter_lookup(ctx, cfg, pkt, len, &best_rank, &r);
	if (expr_slot != WEIR_FILTER_NO_RULE) {
		struct weir_filter_rule *e = bpf_map_lookup_elem(&filter_rules, &expr_slot);

		if (e && (e->generations & (1u << (cfg->active & 1))) &&
		    weir_filter_better(e->rank, best_rank)) {
			slot = expr_slot;
			r = e;
		}
	}
	if (r) {
		weir_count(&filter_counters, slot, len);
		switch (r->action) {
		case WEIR_FILTER_DROP:
			weir_count(&drops, WEIR_DROP_FILTER_RULE, len);
			verdict = XDP_DROP;
			break;
		case WEIR_FILTER_RATE_LIMIT:
			if (!weir_filter_under_rate(slot, r, pkt)) {
				weir_count(&drops, WEIR_DROP_RATE_LIMITED, len);
				verdict = XDP_DROP;
			}
			break;
		default:
			break;
		}
		if (r->action != WEIR_FILTER_PASS)
			weir_filter_trace(ctx, cfg, slot, r->action, verdict, len);
	}
	if (weir_filter_record_decision) {
		__u64 decision = ((__u64)slot << 32) | (__u32)verdict;

		bpf_map_update_elem(&filter_decision, &zero, &decision, BPF_ANY);
	}
	return verdict;
}

#endif
