// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A traffic generator for benchmarks and chaos tests: run with
 * BPF_PROG_TEST_RUN in live-frames mode, it sends its input frame out of
 * an interface as XDP frames, with no socket buffers on the sending side.
 */
#include "../lib/common.h"

/* Set by the loader: where the frames go. */
const volatile __u32 weir_trafficgen_ifindex = 0;

SEC("xdp")
int weir_trafficgen(struct xdp_md *ctx)
{
	return bpf_redirect(weir_trafficgen_ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
