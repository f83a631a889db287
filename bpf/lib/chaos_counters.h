/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What each chaos experiment did (packets dropped, sent twice, corrupted,
 * shaped or delayed; connect() calls failed), by its slot. Declared by the
 * node datapath and the socket load balancer alike: one pinned map.
 */
#ifndef WEIR_LIB_CHAOS_COUNTERS_H
#define WEIR_LIB_CHAOS_COUNTERS_H

#include "common.h"
#include "traffic.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_CHAOS_MAX_EXPERIMENTS);
	__type(key, __u32);
	__type(value, struct weir_counter);
} chaos_counters SEC(".maps");

#endif
