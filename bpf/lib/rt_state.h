/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Runtime security's maps and the few helpers every hook shares: the scope
 * (which tasks this agent watches), the live rule bank, the kernel's memory
 * of live processes, per-CPU scratch, the ring buffer to the agent and the
 * counters of everything that did not become an event.
 */
#ifndef WEIR_LIB_RT_STATE_H
#define WEIR_LIB_RT_STATE_H

#include "common.h"
#include <bpf/bpf_tracing.h>
#include "ring_wakeup.h"

/* bpf_set_retval (5.18+) lets a cgroup hook choose the errno; without it a
 * refusal is EPERM. Set by the loader from a helper probe. */
const volatile __u8 rt_have_set_retval = 0;

/* The reader polls on a short timer and is woken only when this much
 * comes to wait (ring_wakeup.h). Set by the loader from the ring's size. */
const volatile __u64 rt_wakeup_bytes = 65536;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20); /* the loader sets --runtime-ring-bytes */
} rt_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_RT_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} rt_counters SEC(".maps");

/* The cgroup whose tasks this agent watches: a lab node's, or the root. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} rt_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_rt_config);
} rt_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * WEIR_RT_MAX_RULES);
	__type(key, __u32);
	__type(value, struct weir_rt_rule);
} rt_rules SEC(".maps");

/* Written only by the agent, rarely: not preallocated (5.8 MB otherwise). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_RT_MAX_RULE_CGROUPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_rt_rule_cgroup);
	__type(value, __u8);
} rt_rule_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * WEIR_RT_MAX_RULES);
	__type(key, __u32);
	__type(value, struct weir_rt_rate);
} rt_rates SEC(".maps");

/* Live processes by thread-group id: set at exec, copied at fork, removed
 * at exit, seeded from /proc by the agent at start. LRU: a leak of missed
 * exits can never fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_RT_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct weir_rt_proc);
} rt_procs SEC(".maps");

/* The dynamic loaders of this host (their files), written by the agent at
 * start: a process that execs one directly is judged again by the first
 * file it maps, the program it was asked to run. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct weir_rt_file_id);
	__type(value, __u8);
} rt_loaders SEC(".maps");

/* Processes whose exit was reported, by (tgid, start time): threads that
 * end together can all see the live count at zero, and only the first to
 * claim the process reports it. LRU: old claims go by themselves. */
struct rt_exit_key {
	__u32 pid;
	__u32 pad;
	__u64 start_time;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rt_exit_key);
	__type(value, __u8);
} rt_exited SEC(".maps");

#define RT_WALK_DEPTH 32
/* Subject buffers are read with an index masked to 1023, so each one is
 * followed by enough of the scratch value to keep every index inside it. */
struct rt_scratch {
	union {
		struct weir_rt_exec_event exec;
		struct weir_rt_net_event net;
		struct weir_rt_file_event file;
	};
	char binary[WEIR_RT_PATH_MAX];
	char parent[WEIR_RT_PATH_MAX];
	char slack[WEIR_RT_ARGS_MAX];
	__u64 names[RT_WALK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_scratch);
} rt_scratch_map SEC(".maps");

/* Where an exec event is packed for the ring (rt_post_exec). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_rt_exec_record);
} rt_exec_out SEC(".maps");

static __always_inline void rt_count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&rt_counters, &counter);
	if (value)
		*value += 1;
}

static __always_inline struct rt_scratch *rt_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&rt_scratch_map, &zero);
}

static __always_inline struct weir_rt_config *rt_config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&rt_config, &zero);
}

/* Tracepoints and LSM hooks see every task on the host; only those under
 * the scope cgroup are this agent's. */
static __always_inline bool rt_in_scope(void)
{
	return bpf_current_task_under_cgroup(&rt_scope, 0) == 1;
}

/* The header of an event about the current task. */
static __always_inline void rt_header_current(struct weir_rt_header *hdr, __u8 type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	__builtin_memset(hdr, 0, sizeof(*hdr));
	hdr->type = type;
	hdr->pid = pid_tgid >> 32;
	hdr->tid = (__u32)pid_tgid;
	hdr->uid = (__u32)uid_gid;
	hdr->gid = uid_gid >> 32;
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->ktime = bpf_ktime_get_ns();
}

static __always_inline void rt_post(void *event, __u64 size)
{
	__u64 flags = ring_wakeup_flags(&rt_ring, size, rt_wakeup_bytes);

	if (bpf_ringbuf_output(&rt_ring, event, size, flags))
		rt_count(WEIR_RT_CNT_RING_FULL);
}

/* One-second windows per rule; approximate under concurrency, which only
 * ever lets a few more through, never fewer. */
static __always_inline bool rt_rate_allows(__u32 slot, __u32 rate_per_sec, __u64 now)
{
	struct weir_rt_rate *rate;

	if (!rate_per_sec)
		return true;
	rate = bpf_map_lookup_elem(&rt_rates, &slot);
	if (!rate)
		return true;
	if (rate->window != now / 1000000000ULL) {
		rate->window = now / 1000000000ULL;
		rate->posted = 0;
	}
	if (rate->posted >= rate_per_sec) {
		rt_count(WEIR_RT_CNT_RATE_LIMITED);
		return false;
	}
	rate->posted++;
	return true;
}

#endif
