// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Baselines for the packet filter's cost benchmark (scripts/bench/filter-cost.sh):
 * the least any filter keyed on packet fields must do. weir_bench_floor parses
 * the packet with the datapath's parser, builds a filter key the way one
 * tuple-space shape does (source /24, protocol, destination port) and makes
 * one hash lookup in a map the benchmark fills (each key's value XDP_DROP,
 * so a hit shows in the verdict); nothing is counted.
 */
#include "../lib/common.h"
#include "../lib/parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_FILTER_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_filter_key);
	__type(value, __u32);
} bench_keys SEC(".maps");

SEC("xdp")
int weir_bench_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct weir_filter_key key = {};
	struct weir_pkt pkt;
	__u32 *hit;

	weir_parse(data, data_end, &pkt);
	key.family = pkt.family;
	key.proto = pkt.l4_proto;
	key.dport = pkt.dport;
	key.src[0] = pkt.src[0] & bpf_htonl(0xffffff00);
	hit = bpf_map_lookup_elem(&bench_keys, &key);
	return hit && *hit == XDP_DROP ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int weir_bench_trivial(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
