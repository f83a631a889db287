// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * BENCHMARK ONLY, never loaded by the agent: the Katran-equivalent
 * baseline of the load balancer's cost benchmark (scripts/bench/xlb-cost.sh,
 * crates/weir-bpf/examples/xlb_cost.rs). The per-packet work of Katran's
 * balancer (facebookincubator/katran, katran/lib/bpf/balancer_kern.c,
 * balancer_maps.h, balancer_consts.h, pckt_parsing.h, pckt_encap.h,
 * encap_helpers.h) as built by default (none of its optional -D features:
 * no inline decapsulation, no source routing, no ICMP too-big generation,
 * no GUE, no TCP server-id routing, no global LRU), for a TCP or UDP packet,
 * and nothing more. Written for this benchmark from a reading of those
 * files; each step names the function it stands for. docs/lb.md, "Cost",
 * lists the facts.
 */
#include "../lib/common.h"

#define BASE_MAX_VIPS 64
#define BASE_RING_SIZE 65537
#define BASE_MAX_REALS 4096
#define BASE_MAX_FLOWS 65536
#define BASE_MAX_CPUS 128
/* balancer_consts.h: MAX_PCKT_SIZE, ONE_SEC, LRU_UDP_TIMEOUT, the seeds. */
#define BASE_MAX_PCKT_SIZE 1514
#define BASE_ONE_SEC 1000000000ULL
#define BASE_LRU_UDP_TIMEOUT 30000000000ULL
#define BASE_JHASH_SEED (BASE_MAX_VIPS * BASE_RING_SIZE)
#define BASE_JHASH_SEED_V6 BASE_MAX_VIPS
#define BASE_IPIP_V4_PREFIX 4268 /* 172.16/10, network order in the low half */
/* The benchmark remembers every new flow (Weir's run sets no limit
 * either); Katran's default MAX_CONN_RATE is 125000. */
#define BASE_MAX_CONN_RATE 0xFFFFFFFFULL

/* balancer_consts.h: vip_meta flags, and the counters after the VIPs in
 * `stats`. */
#define BASE_F_HASH_NO_SRC_PORT (1 << 0)
#define BASE_F_LRU_BYPASS (1 << 1)
#define BASE_F_QUIC_VIP (1 << 2)
#define BASE_F_HASH_DPORT_ONLY (1 << 3)
#define BASE_LRU_CNTRS 0
#define BASE_LRU_MISS_CNTR 1
#define BASE_NEW_CONN_RATE_CNTR 2
#define BASE_FALLBACK_LRU_CNTR 3

struct base_vip_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct base_vip {
	__u32 index;
	__u32 flags;
};

struct base_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* struct real_pos_lru: the real's index, and a UDP flow's last use. */
struct base_lru {
	__u32 pos;
	__u32 pad;
	__u64 atime;
};

struct base_real {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* struct lb_stats */
struct base_stats {
	__u64 v1;
	__u64 v2;
};

/* struct ctl_value: the default gateway's MAC at position 0. */
struct base_ctl {
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BASE_MAX_VIPS);
	__type(key, struct base_vip_key);
	__type(value, struct base_vip);
} base_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BASE_MAX_VIPS * BASE_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} base_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BASE_MAX_REALS);
	__type(key, __u32);
	__type(value, struct base_real);
} base_reals SEC(".maps");

/* balancer_maps.h's lru_mapping: one plain LRU per CPU, made by the
 * loader (crates/weir-bpf/src/xlb_baseline.rs; Katran's KatranLb.cpp
 * does the same per forwarding core), found through the CPU's number. */
struct base_lru_map {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BASE_MAX_FLOWS);
	__type(key, struct base_flow);
	__type(value, struct base_lru);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, BASE_MAX_CPUS);
	__type(key, __u32);
	__array(values, struct base_lru_map);
} base_lru_mapping SEC(".maps");

/* fallback_cache: for a CPU without its own LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1000);
	__type(key, struct base_flow);
	__type(value, struct base_lru);
} base_fallback_lru SEC(".maps");

/* `stats`: per VIP, then the program's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASE_MAX_VIPS * 2);
	__type(key, __u32);
	__type(value, struct base_stats);
} base_stats SEC(".maps");

/* reals_stats */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASE_MAX_REALS);
	__type(key, __u32);
	__type(value, struct base_stats);
} base_real_stats SEC(".maps");

/* lru_miss_stats and lru_miss_stats_vip: one watched VIP's misses per real. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASE_MAX_REALS);
	__type(key, __u32);
	__type(value, __u32);
} base_lru_miss_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct base_vip_key);
} base_lru_miss_stats_vip SEC(".maps");

/* ctl_array */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct base_ctl);
} base_ctl SEC(".maps");

/* The kernel's jhash (Bob Jenkins' lookup3), which Katran includes:
 * jhash over the 16 bytes of an IPv6 source, jhash_2words to finish. */
#define BASE_JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 base_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define base_jhash_mix(a, b, c)                           \
	do {                                              \
		a -= c; a ^= base_rol32(c, 4); c += b;    \
		b -= a; b ^= base_rol32(a, 6); a += c;    \
		c -= b; c ^= base_rol32(b, 8); b += a;    \
		a -= c; a ^= base_rol32(c, 16); c += b;   \
		b -= a; b ^= base_rol32(a, 19); a += c;   \
		c -= b; c ^= base_rol32(b, 4); b += a;    \
	} while (0)

#define base_jhash_final(a, b, c)                         \
	do {                                              \
		c ^= b; c -= base_rol32(b, 14);           \
		a ^= c; a -= base_rol32(c, 11);           \
		b ^= a; b -= base_rol32(a, 25);           \
		c ^= b; c -= base_rol32(b, 16);           \
		a ^= c; a -= base_rol32(c, 4);            \
		b ^= a; b -= base_rol32(a, 14);           \
		c ^= b; c -= base_rol32(b, 24);           \
	} while (0)

static __always_inline __u32 base_jhash_2words(__u32 a, __u32 b, __u32 initval)
{
	__u32 c = 0;

	initval += BASE_JHASH_INITVAL + (2 << 2);
	a += initval;
	b += initval;
	c += initval;
	base_jhash_final(a, b, c);
	return c;
}

/* jhash(key, 16, initval): one round of three words, then a 4-byte tail. */
static __always_inline __u32 base_jhash16(const __u32 *key, __u32 initval)
{
	const __u8 *tail = (const __u8 *)&key[3];
	__u32 a, b, c;

	a = b = c = BASE_JHASH_INITVAL + 16 + initval;
	a += key[0];
	b += key[1];
	c += key[2];
	base_jhash_mix(a, b, c);
	a += (__u32)tail[3] << 24;
	a += (__u32)tail[2] << 16;
	a += (__u32)tail[1] << 8;
	a += tail[0];
	base_jhash_final(a, b, c);
	return c;
}

/* get_packet_hash */
static __always_inline __u32 base_hash(const struct base_flow *flow)
{
	__u32 ports = ((__u32)flow->dport << 16) | flow->sport;

	if (flow->family == 6)
		return base_jhash_2words(base_jhash16(flow->src, BASE_JHASH_SEED_V6), ports, BASE_JHASH_SEED);
	return base_jhash_2words(flow->src[0], ports, BASE_JHASH_SEED);
}

/* is_under_flood: the new-connection rate lives in `stats`. */
static __always_inline bool base_under_flood(__u64 *now)
{
	__u32 key = BASE_MAX_VIPS + BASE_NEW_CONN_RATE_CNTR;
	struct base_stats *rate = bpf_map_lookup_elem(&base_stats, &key);

	if (!rate)
		return true;
	*now = bpf_ktime_get_ns();
	if (*now - rate->v2 > BASE_ONE_SEC) {
		rate->v1 = 1;
		rate->v2 = *now;
		return false;
	}
	rate->v1++;
	return rate->v1 > BASE_MAX_CONN_RATE;
}

/* update_vip_lru_miss_stats (the newest balancer_kern.c): the watched VIP's
 * misses, per real. */
static __always_inline bool base_vip_lru_miss(const struct base_vip_key *key, __u32 real_index)
{
	__u32 zero = 0;
	const struct base_vip_key *watched = bpf_map_lookup_elem(&base_lru_miss_stats_vip, &zero);
	__u32 *misses;

	if (!watched)
		return false;
	if (watched->addr[0] == key->addr[0] && watched->addr[1] == key->addr[1] &&
	    watched->addr[2] == key->addr[2] && watched->addr[3] == key->addr[3] && watched->port == key->port &&
	    watched->proto == key->proto) {
		misses = bpf_map_lookup_elem(&base_lru_miss_stats, &real_index);
		if (!misses)
			return false;
		*misses += 1;
	}
	return true;
}

SEC("xdp")
int weir_xlb_baseline(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct base_vip_key key = {};
	struct base_flow flow = {};
	struct base_lru new_lru = {};
	const struct base_vip *vip;
	struct base_stats *stats, *miss;
	const struct base_real *real = 0;
	const struct base_ctl *ctl;
	struct base_lru *known;
	void *lru;
	__u32 *slot_real, real_index = 0, slot, l4_off, cpu, stats_key, zero = 0;
	__u64 now = 0;
	__u16 pkt_bytes, *ports, original_sport;
	__u8 tos;
	bool syn = false, flood;

	/* balancer_ingress */
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	/* process_l3_headers */
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		if (ip->ihl != 5)
			return XDP_DROP;
		tos = ip->tos;
		flow.proto = ip->protocol;
		pkt_bytes = bpf_ntohs(ip->tot_len);
		if (ip->frag_off & bpf_htons(0x3FFF))
			return XDP_DROP;
		flow.src[0] = ip->saddr;
		flow.dst[0] = ip->daddr;
		flow.family = 4;
		l4_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		flow.proto = ip6->nexthdr;
		tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		pkt_bytes = bpf_ntohs(ip6->payload_len);
		if (flow.proto == IPV6_NEXTHDR_FRAGMENT)
			return XDP_DROP;
		__builtin_memcpy(flow.src, &ip6->saddr, 16);
		__builtin_memcpy(flow.dst, &ip6->daddr, 16);
		flow.family = 6;
		l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	/* parse_tcp, parse_udp: a SYN is any packet with the SYN bit. */
	if (flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;

		if ((void *)(tcp + 1) > data_end)
			return XDP_DROP;
		syn = tcp->syn;
	} else if (flow.proto == IPPROTO_UDP) {
		if (data + l4_off + sizeof(struct udphdr) > data_end)
			return XDP_DROP;
	} else {
		return XDP_PASS;
	}
	ports = data + l4_off;
	flow.sport = ports[0];
	flow.dport = ports[1];

	/* process_packet: the VIP, its port's or the any-port one. */
	__builtin_memcpy(key.addr, flow.dst, sizeof(key.addr));
	key.port = flow.dport;
	key.proto = flow.proto;
	key.family = flow.family;
	vip = bpf_map_lookup_elem(&base_vips, &key);
	if (!vip) {
		key.port = 0;
		vip = bpf_map_lookup_elem(&base_vips, &key);
		if (!vip)
			return XDP_PASS;
		if (!(vip->flags & BASE_F_HASH_DPORT_ONLY))
			flow.dport = 0;
	}
	if (data_end - data > BASE_MAX_PCKT_SIZE)
		return XDP_DROP;
	/* Total packets (LRU_CNTRS.v1); its v2 counts the misses below. */
	stats_key = BASE_MAX_VIPS + BASE_LRU_CNTRS;
	stats = bpf_map_lookup_elem(&base_stats, &stats_key);
	if (!stats)
		return XDP_DROP;
	stats->v1++;
	/* A QUIC VIP would look its connection id up here; the benchmark's
	 * VIPs are TCP, so only the flag is tested, as Katran does. */
	if (vip->flags & BASE_F_QUIC_VIP)
		return XDP_PASS;
	original_sport = flow.sport;
	if (vip->flags & BASE_F_HASH_NO_SRC_PORT)
		flow.sport = 0;
	cpu = bpf_get_smp_processor_id();
	lru = bpf_map_lookup_elem(&base_lru_mapping, &cpu);
	if (!lru) {
		lru = &base_fallback_lru;
		stats_key = BASE_MAX_VIPS + BASE_FALLBACK_LRU_CNTR;
		miss = bpf_map_lookup_elem(&base_stats, &stats_key);
		if (!miss)
			return XDP_DROP;
		miss->v1++;
	}
	/* connection_table_lookup */
	if (!syn && !(vip->flags & BASE_F_LRU_BYPASS)) {
		known = bpf_map_lookup_elem(lru, &flow);
		if (known && flow.proto == IPPROTO_UDP) {
			now = bpf_ktime_get_ns();
			if (now - known->atime > BASE_LRU_UDP_TIMEOUT)
				known = 0;
			else
				known->atime = now;
		}
		if (known) {
			real_index = known->pos;
			real = bpf_map_lookup_elem(&base_reals, &real_index);
		}
	}
	if (!real) {
		if (flow.proto == IPPROTO_TCP) {
			stats_key = BASE_MAX_VIPS + BASE_LRU_MISS_CNTR;
			miss = bpf_map_lookup_elem(&base_stats, &stats_key);
			if (!miss)
				return XDP_DROP;
			if (syn)
				miss->v1++;
			else
				miss->v2++;
		}
		/* get_packet_dst */
		flood = base_under_flood(&now);
		if (vip->flags & BASE_F_HASH_DPORT_ONLY) {
			flow.sport = flow.dport;
			__builtin_memset(flow.src, 0, sizeof(flow.src));
		}
		slot = vip->index * BASE_RING_SIZE + base_hash(&flow) % BASE_RING_SIZE;
		slot_real = bpf_map_lookup_elem(&base_rings, &slot);
		if (!slot_real)
			return XDP_DROP;
		real_index = *slot_real;
		real = bpf_map_lookup_elem(&base_reals, &real_index);
		if (!real)
			return XDP_DROP;
		if (!(vip->flags & BASE_F_LRU_BYPASS) && !flood) {
			if (flow.proto == IPPROTO_UDP)
				new_lru.atime = now;
			new_lru.pos = real_index;
			bpf_map_update_elem(lru, &flow, &new_lru, BPF_ANY);
		}
		if (!base_vip_lru_miss(&key, real_index))
			return XDP_DROP;
		stats->v2++;
	}
	ctl = bpf_map_lookup_elem(&base_ctl, &zero);
	if (!ctl)
		return XDP_DROP;
	stats = bpf_map_lookup_elem(&base_stats, &vip->index);
	if (!stats)
		return XDP_DROP;
	stats->v1++;
	stats->v2 += pkt_bytes;
	stats = bpf_map_lookup_elem(&base_real_stats, &real_index);
	if (!stats)
		return XDP_DROP;
	stats->v1++;
	stats->v2 += pkt_bytes;
	flow.sport = original_sport;

	/* encap_v4 / encap_v6 (pckt_encap.h), create_v4_hdr / create_v6_hdr
	 * (encap_helpers.h): the inner TOS copied (COPY_INNER_PACKET_TOS), TTL
	 * 64, the outer source a fixed prefix with the client's bits. */
	if (real->family == 4) {
		struct ethhdr *new_eth, *old_eth;
		struct iphdr *outer;
		__u32 suffix = ((__u32)bpf_htons(flow.sport) << 16) ^ flow.src[0];
		__u32 sum = 0;
		__u16 *word;
		int i;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		new_eth = data;
		outer = data + sizeof(*new_eth);
		old_eth = data + sizeof(struct iphdr);
		if ((void *)(new_eth + 1) > data_end || (void *)(old_eth + 1) > data_end || (void *)(outer + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(new_eth->h_dest, ctl->mac, 6);
		__builtin_memcpy(new_eth->h_source, old_eth->h_dest, 6);
		new_eth->h_proto = bpf_htons(ETH_P_IP);
		outer->version = 4;
		outer->ihl = 5;
		outer->frag_off = 0;
		outer->protocol = IPPROTO_IPIP;
		outer->check = 0;
		outer->tos = tos;
		outer->tot_len = bpf_htons(pkt_bytes + sizeof(*outer));
		outer->daddr = real->addr[0];
		outer->saddr = (suffix & 0xFFFF0000) | BASE_IPIP_V4_PREFIX;
		outer->ttl = 64;
		/* ipv4_csum_inline (csum_helpers.h) */
		word = (__u16 *)outer;
#pragma unroll
		for (i = 0; i < (int)(sizeof(*outer) / 2); i++)
			sum += word[i];
		sum = (sum & 0xFFFF) + (sum >> 16);
		sum = (sum & 0xFFFF) + (sum >> 16);
		outer->check = ~sum;
	} else {
		struct ethhdr *new_eth, *old_eth;
		struct ipv6hdr *outer;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		new_eth = data;
		outer = data + sizeof(*new_eth);
		old_eth = data + sizeof(struct ipv6hdr);
		if ((void *)(new_eth + 1) > data_end || (void *)(old_eth + 1) > data_end || (void *)(outer + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(new_eth->h_dest, ctl->mac, 6);
		__builtin_memcpy(new_eth->h_source, old_eth->h_dest, 6);
		new_eth->h_proto = bpf_htons(ETH_P_IPV6);
		outer->version = 6;
		__builtin_memset(outer->flow_lbl, 0, sizeof(outer->flow_lbl));
		outer->priority = (tos & 0xF0) >> 4;
		outer->flow_lbl[0] = (tos & 0x0F) << 4;
		outer->nexthdr = flow.family == 6 ? IPPROTO_IPV6 : IPPROTO_IPIP;
		outer->payload_len = bpf_htons(flow.family == 6 ? pkt_bytes + sizeof(*outer) : pkt_bytes);
		outer->hop_limit = 64;
		outer->saddr.in6_u.u6_addr32[0] = 1; /* 0100::/64, RFC 6666 */
		outer->saddr.in6_u.u6_addr32[1] = 0;
		outer->saddr.in6_u.u6_addr32[2] = 0;
		outer->saddr.in6_u.u6_addr32[3] = (flow.family == 6 ? flow.src[3] : flow.src[0]) ^ flow.sport;
		__builtin_memcpy(&outer->daddr, real->addr, 16);
	}
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
