// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * BENCHMARK ONLY, never loaded by the agent: the Katran-equivalent
 * baseline of the load balancer's cost benchmark (scripts/bench/xlb-cost.sh,
 * crates/weir-bpf/examples/xlb_cost.rs). What Katran's balancer does for a
 * TCP or UDP packet of a VIP, and nothing more: parse Ethernet, IPv4 (no
 * options, no fragments) or IPv6 (no extension headers), TCP or UDP; look
 * the VIP up (its port, else port 0); count the VIP's packets and bytes
 * (per CPU); look the connection up in the per-CPU LRU, else hash the
 * 5-tuple onto the VIP's 65,537-slot ring, behind Katran's flood guard
 * (one clock read per new connection), and remember it; read the real from
 * the reals array; put an IPIP header in front (4in4, 6in6) with one
 * bpf_xdp_adjust_head, and XDP_TX back out. Not a VIP: XDP_PASS.
 */
#include "../lib/common.h"

#define BASE_MAX_VIPS 64
#define BASE_RING_SIZE 65537
#define BASE_MAX_REALS 4096
#define BASE_MAX_FLOWS 65536
#define BASE_FLOOD_LIMIT 0xFFFFFFFFu

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

struct base_real {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

struct base_stats {
	__u64 packets;
	__u64 bytes;
};

struct base_flood {
	__u64 window_start_ns;
	__u64 inserts;
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BASE_MAX_FLOWS);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct base_flow);
	__type(value, __u32);
} base_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASE_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct base_stats);
} base_vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct base_flood);
} base_flood SEC(".maps");

/* The outer source's address (IPv4; IPv6 in all four words). */
const volatile __u32 base_src4 = 0;
const volatile __u32 base_src6[4] = {};

static __always_inline __u32 base_hash(const struct base_flow *flow)
{
	__u64 x = ((__u64)(flow->src[0] ^ flow->src[1] ^ flow->src[2] ^ flow->src[3]) << 32) |
		  ((__u64)flow->sport << 8) | flow->proto;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (__u32)x;
}

static __always_inline bool base_flood_allows(void)
{
	__u32 zero = 0;
	struct base_flood *flood = bpf_map_lookup_elem(&base_flood, &zero);
	__u64 now;

	if (!flood)
		return true;
	now = bpf_ktime_get_ns();
	if (now - flood->window_start_ns > 1000000000ULL) {
		flood->window_start_ns = now;
		flood->inserts = 0;
	}
	if (flood->inserts >= BASE_FLOOD_LIMIT)
		return false;
	flood->inserts++;
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
	const struct base_vip *vip;
	struct base_stats *stats;
	const struct base_real *real;
	__u32 *known, real_index, slot, l4_off, pkt_len = data_end - data;
	__u16 *ports;
	bool syn = false;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3FFF)))
			return XDP_DROP;
		flow.src[0] = ip->saddr;
		flow.dst[0] = ip->daddr;
		flow.proto = ip->protocol;
		flow.family = 4;
		l4_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(flow.src, &ip6->saddr, 16);
		__builtin_memcpy(flow.dst, &ip6->daddr, 16);
		flow.proto = ip6->nexthdr;
		flow.family = 6;
		l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	if (flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;

		if ((void *)(tcp + 1) > data_end)
			return XDP_DROP;
		syn = tcp->syn && !tcp->ack;
	} else if (flow.proto == IPPROTO_UDP) {
		if (data + l4_off + sizeof(struct udphdr) > data_end)
			return XDP_DROP;
	} else {
		return XDP_PASS;
	}
	ports = data + l4_off;
	flow.sport = ports[0];
	flow.dport = ports[1];

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
	}
	stats = bpf_map_lookup_elem(&base_vip_stats, &vip->index);
	if (!stats)
		return XDP_DROP;
	stats->packets++;
	stats->bytes += pkt_len;

	known = syn ? 0 : bpf_map_lookup_elem(&base_flows, &flow);
	if (known) {
		real_index = *known;
	} else {
		slot = vip->index * BASE_RING_SIZE + base_hash(&flow) % BASE_RING_SIZE;
		known = bpf_map_lookup_elem(&base_rings, &slot);
		if (!known)
			return XDP_DROP;
		real_index = *known;
		if (base_flood_allows())
			bpf_map_update_elem(&base_flows, &flow, &real_index, BPF_ANY);
	}
	real = bpf_map_lookup_elem(&base_reals, &real_index);
	if (!real || !real->family)
		return XDP_DROP;

	if (flow.family == 4) {
		struct ethhdr *new_eth, *old_eth;
		struct iphdr *outer;
		__u32 sum = 0;
		__u16 *word;
		int i;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		new_eth = data;
		old_eth = data + sizeof(struct iphdr);
		outer = data + sizeof(*new_eth);
		if ((void *)(outer + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(new_eth->h_dest, old_eth->h_source, 6);
		__builtin_memcpy(new_eth->h_source, old_eth->h_dest, 6);
		new_eth->h_proto = bpf_htons(ETH_P_IP);
		outer->version = 4;
		outer->ihl = 5;
		outer->tos = 0;
		outer->tot_len = bpf_htons(pkt_len - sizeof(struct ethhdr) + sizeof(*outer));
		outer->id = 0;
		outer->frag_off = 0;
		outer->ttl = 64;
		outer->protocol = IPPROTO_IPIP;
		outer->check = 0;
		outer->saddr = base_src4 ^ (flow.src[0] & bpf_htonl(0xFFFF));
		outer->daddr = real->addr[0];
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
		old_eth = data + sizeof(struct ipv6hdr);
		outer = data + sizeof(*new_eth);
		if ((void *)(outer + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(new_eth->h_dest, old_eth->h_source, 6);
		__builtin_memcpy(new_eth->h_source, old_eth->h_dest, 6);
		new_eth->h_proto = bpf_htons(ETH_P_IPV6);
		outer->version = 6;
		outer->priority = 0;
		outer->flow_lbl[0] = 0;
		outer->flow_lbl[1] = 0;
		outer->flow_lbl[2] = 0;
		outer->payload_len = bpf_htons(pkt_len - sizeof(struct ethhdr));
		outer->nexthdr = IPPROTO_IPV6;
		outer->hop_limit = 64;
		outer->saddr.in6_u.u6_addr32[0] = base_src6[0];
		outer->saddr.in6_u.u6_addr32[1] = base_src6[1];
		outer->saddr.in6_u.u6_addr32[2] = base_src6[2];
		outer->saddr.in6_u.u6_addr32[3] = base_src6[3] ^ flow.src[3];
		__builtin_memcpy(&outer->daddr, real->addr, 16);
	}
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
