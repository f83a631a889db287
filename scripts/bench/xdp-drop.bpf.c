/*
 * The drop-rate benchmark's ceiling (scripts/bench/filter-drop-rate.sh): an
 * XDP program that drops every frame and does nothing else, so its rate is
 * what the receiving veth's XDP path costs before any filter logic.
 * Only ever attached inside the benchmark's namespaces.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int bench_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
