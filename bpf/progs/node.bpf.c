// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The node datapath: what every agent attaches to its node's uplink.
 *
 * It accounts for traffic in both directions, and on ingress runs the packet
 * filter: Weir drops nothing unless a filter rule says so. At tc ingress it
 * translates north-south service traffic (NodePort and friends). When expression
 * rules exist, the agent attaches a generated program in front of
 * weir_node_ingress that tail-calls it (slot 0 of filter_progs).
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/traffic.h"
#include "../lib/filter.h"
#include "../lib/nodeport.h"
#include "../lib/endpoint.h"
#include "../lib/masq6.h"

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

/* Pods' veths by ifindex, written by the agent: 1 while the filter's XDP
 * program runs there and counts what the pod sends, 0 while it does not
 * (the agent takes it off while the filter has no rules, sparing pods
 * generic XDP) and tc ingress counts instead. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} pod_veths SEC(".maps");

/* Counts a parsed packet (`reason`: what weir_parse returned). */
static __always_inline void count_parsed(void *traffic, enum weir_drop_reason reason, __u64 len,
					 const struct weir_pkt *pkt)
{
	if (reason != WEIR_DROP_NONE) {
		weir_count(&invalid_packets, reason, len);
		weir_count(traffic, WEIR_TRAFFIC_INVALID, len);
		return;
	}
	weir_count(traffic, weir_classify(pkt), len);
}

/* At tc ingress of a pod's veth without the filter's XDP: counts what the
 * pod sends, as XDP would have. A global function, verified once: a branch
 * in the tc ingress program itself doubles the states of everything after
 * it past the verifier's limit on older kernels. */
__noinline int weir_count_pod_ingress(struct __sk_buff *skb, const struct weir_pkt *pkt, __u32 invalid)
{
	__u32 ifindex, *xdp_counts;

	if (!skb || !pkt)
		return 0;
	ifindex = skb->ifindex;
	xdp_counts = bpf_map_lookup_elem(&pod_veths, &ifindex);
	if (!xdp_counts || *xdp_counts)
		return 0;
	count_parsed(&traffic_ingress, invalid, skb->len, pkt);
	return 1;
}

/* Parses an XDP frame and counts it; returns why the packet is invalid,
 * or WEIR_DROP_NONE. Invalid packets keep whatever fields parsed before
 * the fault. (tc programs parse with weir_skb_parse.) */
static __always_inline enum weir_drop_reason account(void *traffic, void *data, void *data_end, __u64 len,
						     struct weir_pkt *pkt)
{
	enum weir_drop_reason reason = weir_parse(data, data_end, pkt);

	count_parsed(traffic, reason, len, pkt);
	return reason;
}

SEC("xdp")
int weir_node_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, expr_slot = WEIR_FILTER_NO_RULE;
	struct weir_filter_expr_result *expr;
	__u32 len = data_end - data;
	struct weir_pkt pkt;

	account(&traffic_ingress, data, data_end, len, &pkt);
	/* Set only by the expression program, just before it tail-called us. */
	expr = bpf_map_lookup_elem(&filter_expr_result, &zero);
	if (expr && expr->valid) {
		expr_slot = expr->slot;
		/* Rules judge the frame as it was on the wire, tag included. */
		if (expr->vlan_present)
			len += 4;
		expr->valid = 0;
		expr->vlan_present = 0;
	}
	return weir_filter(ctx, &pkt, len, expr_slot);
}

/* tcx/egress names the tcx attach type; the clsact fallback ignores it. */
SEC("tcx/egress")
int weir_node_egress(struct __sk_buff *skb)
{
	struct weir_pkt pkt;
	enum weir_drop_reason invalid = weir_skb_parse(skb, &pkt);

	count_parsed(&traffic_egress, invalid, skb->len, &pkt);
	if (invalid != WEIR_DROP_NONE)
		return TC_ACT_OK;
	/* On a pod's veth: ingress policy for what the node's stack sends in. */
	return endpoint_from_stack(skb, &pkt);
}

/* tcx/ingress names the tcx attach type; the clsact fallback ignores it. */
SEC("tcx/ingress")
int weir_node_tc_ingress(struct __sk_buff *skb)
{
	enum weir_drop_reason invalid;
	struct weir_pkt pkt;
	int verdict;

	/* One parse serves every step: none of them rewrites the packet and
	 * then hands it on to the next. */
	invalid = weir_skb_parse(skb, &pkt);
	weir_count_pod_ingress(skb, &pkt, invalid);
	/* A local pod's packet is judged by its egress policy before any
	 * translation (a no-op while the agent has written no endpoints). */
	verdict = endpoint_egress(skb, &pkt, invalid);
	if (verdict != TC_ACT_OK || invalid != WEIR_DROP_NONE)
		return verdict;
	verdict = nodeport_ingress(skb, &pkt);
	if (verdict == TC_ACT_OK)
		verdict = masq6_ingress(skb, &pkt);
	/* Not translated: a packet for or from a local pod takes the pod path. */
	return verdict != TC_ACT_OK ? verdict : endpoint_route(skb, &pkt);
}

/* Every socket made below the agent's cgroup remembers its creator, so a
 * pod's flow events can name the process behind them (bpf/lib/sock_owner.h).
 * Never refuses a socket. */
SEC("cgroup/sock_create")
int weir_sock_owner(struct bpf_sock *sk)
{
	sock_owner_tag(sk);
	return 1;
}

#ifndef WEIR_NO_CHAOS
/* On the far end of the chaos bandwidth shaper's veth pair (attached by
 * the agent while a bandwidth experiment runs). */
SEC("tcx/ingress")
int weir_chaos_return(struct __sk_buff *skb)
{
	struct weir_pkt pkt;

	if (weir_skb_parse(skb, &pkt) != WEIR_DROP_NONE)
		return TC_ACT_OK;
	return endpoint_shaper_return(skb, &pkt);
}

/* Run by the agent for a SocketChaos tcp-reset, in each pod's namespace. */
SEC("iter/tcp")
int weir_chaos_reset(struct bpf_iter__tcp *ctx)
{
	return chaos_reset_tcp(ctx);
}
#endif

/* bpf_spin_lock and the ring buffer helpers need a GPL-compatible license. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
