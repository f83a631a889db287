/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The socket load balancer's "nothing armed" flags (bpf/api/service.h,
 * weir_lb_quiet): every translated connect would otherwise pay a hash
 * lookup in lb_opt_out, two in chaos_services and one in chaos_connects,
 * maps that are empty unless a pod opted out or a Chaos experiment runs.
 */
#ifndef WEIR_LIB_SOCKLB_QUIET_H
#define WEIR_LIB_SOCKLB_QUIET_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_lb_quiet);
} lb_quiet SEC(".maps");

/* True when the agent knows the map of `flag` is empty. An array lookup
 * the verifier inlines: no helper call. Each map's reader asks for itself,
 * so every program that reads one (connect, sendmsg) skips it alike. */
static __always_inline bool lb_quiet_for(__u32 flag)
{
	__u32 zero = 0;
	const struct weir_lb_quiet *quiet = bpf_map_lookup_elem(&lb_quiet, &zero);

	return quiet && (quiet->flags & flag);
}

#endif
