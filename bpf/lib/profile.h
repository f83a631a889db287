/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Stack sampling into double buffers.
 *
 * Contract: the sampler writes only to buffer `weir_profile_active`; userspace
 * flips that index, then drains and clears the other buffer. Reading never
 * blocks sampling and a sample is never split across buffers. A sample that
 * cannot be stored is counted by enum weir_profile_loss, never dropped silently.
 */
#ifndef WEIR_LIB_PROFILE_H
#define WEIR_LIB_PROFILE_H

#include "common.h"

#define WEIR_PERF_MAX_STACK_DEPTH 127

#define WEIR_STACK_MAP(name)                                                     \
	struct {                                                                 \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);                          \
		__uint(key_size, sizeof(__u32));                                 \
		__uint(value_size, WEIR_PERF_MAX_STACK_DEPTH * sizeof(__u64));  \
		__uint(max_entries, 16384);                                      \
	} name SEC(".maps")

#define WEIR_COUNT_MAP(name)                                  \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, 16384);                   \
		__type(key, struct weir_stack_key);           \
		__type(value, __u64);                         \
	} name SEC(".maps")

#endif
