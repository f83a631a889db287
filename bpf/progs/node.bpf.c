// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The node datapath: what every agent attaches to its node's uplink.
 *
 * Today it accounts for traffic in both directions and never changes a
 * verdict: Weir drops nothing unless a rule says so. Later capabilities hang
 * their logic off these same entry points.
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/traffic.h"

/* Per-CPU packets/bytes by enum weir_traffic_class. Written here; read and
 * summed by the agent for `weir status` and metrics. */
#define WEIR_TRAFFIC_MAP(name)                                   \
	struct {                                                 \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);         \
		__uint(max_entries, WEIR_TRAFFIC_CLASS_MAX);     \
		__type(key, __u32);                              \
		__type(value, struct weir_counter);              \
	} name SEC(".maps")

WEIR_TRAFFIC_MAP(traffic_ingress);
WEIR_TRAFFIC_MAP(traffic_egress);

/* Per-CPU count of invalid packets by enum weir_drop_reason, both directions.
 * They are counted, not dropped: the kernel stack makes its own judgement. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct weir_counter);
} invalid_packets SEC(".maps");

/* `len` is the wire length, which for an skb exceeds its linear part. */
static __always_inline void account(void *traffic, void *data, void *data_end,
				    __u64 len)
{
	struct weir_pkt pkt;
	enum weir_drop_reason reason = weir_parse(data, data_end, &pkt);

	if (reason != WEIR_DROP_NONE) {
		weir_count(&invalid_packets, reason, len);
		weir_count(traffic, WEIR_TRAFFIC_INVALID, len);
		return;
	}
	weir_count(traffic, weir_classify(&pkt), len);
}

SEC("xdp")
int weir_node_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	account(&traffic_ingress, data, data_end, data_end - data);
	return XDP_PASS;
}

/* tcx/egress names the tcx attach type; the clsact fallback ignores it. */
SEC("tcx/egress")
int weir_node_egress(struct __sk_buff *skb)
{
	/* Only the linear part is parsed; pull what the headers need first. */
	bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
	account(&traffic_egress, (void *)(long)skb->data,
		(void *)(long)skb->data_end, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
