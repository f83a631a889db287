/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket faults (see bpf/api/chaos.h): in the socket load balancer's
 * connect hooks, after its translation, a pod's connect() to an address
 * under a live entry fails with the entry's errno for its share of calls.
 */
#ifndef WEIR_LIB_CHAOS_CONNECT_H
#define WEIR_LIB_CHAOS_CONNECT_H

#include "common.h"
#include "chaos_counters.h"
#include "socklb_quiet.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_connect_key);
	__type(value, struct weir_chaos_connect);
} chaos_connects SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace writes them). */
struct weir_chaos_connect_key weir_chaos_connect_key_layout = {};
struct weir_chaos_connect weir_chaos_connect_layout = {};

/* 1 to let the call go on, 0 to fail it with the entry's errno. */
static __always_inline int chaos_connect(struct bpf_sock_addr *ctx, __u8 family)
{
	struct weir_chaos_connect_key key = {.family = family};
	struct weir_chaos_connect *fault;

	if (lb_quiet_for(WEIR_LB_QUIET_CONNECT_FAULTS_FLAG))
		return 1;
	key.cgroup = bpf_get_current_cgroup_id();
	if (family == 6) {
		key.dst[0] = ctx->user_ip6[0];
		key.dst[1] = ctx->user_ip6[1];
		key.dst[2] = ctx->user_ip6[2];
		key.dst[3] = ctx->user_ip6[3];
	} else {
		key.dst[0] = ctx->user_ip4;
	}
	fault = bpf_map_lookup_elem(&chaos_connects, &key);
	if (!fault || bpf_ktime_get_ns() >= fault->end_ns)
		return 1;
	if (fault->probability != 0xffffffffu && bpf_get_prandom_u32() >= fault->probability)
		return 1;
	weir_count(&chaos_counters, fault->experiment, 1);
	bpf_set_retval(-(int)fault->error);
	return 0;
}

#endif
