// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The CPU sampler: runs on every perf_event tick (software cpu-clock) and
 * counts (process, cgroup, kernel stack, user stack, return-address-like
 * words at the user stack pointer) in the active buffer.
 * Map sizes are set by the loader (--max-stacks); scope is a cgroup subtree.
 */
#include "../lib/common.h"
#include "../lib/profile.h"

/* Set by the loader: sample only tasks below the cgroup in scope_cgroup[0]. */
const volatile __u32 scope_to_cgroup = 0;
/* Set by the loader: sample only this process (0 = any). */
const volatile __u32 scope_tgid = 0;

/* Which buffer the sampler writes; flipped by userspace before each drain. */
__u32 weir_profile_active = 0;

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope_cgroup SEC(".maps");

WEIR_STACK_MAP(stacks_0);
WEIR_STACK_MAP(stacks_1);
WEIR_COUNT_MAP(counts_0);
WEIR_COUNT_MAP(counts_1);

/* Per-CPU count of lost or degraded samples by enum weir_profile_loss. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_PROFILE_LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} profile_losses SEC(".maps");

static __always_inline void count_loss(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&profile_losses, &reason);

	if (n)
		(*n)++;
}

SEC("perf_event")
int weir_profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct weir_stack_key key = {};
	struct task_struct *task;
	__u64 one = 1, *count;
	void *counts;
	__u32 buffer;

	key.tgid = id >> 32;
	if (scope_tgid && key.tgid != scope_tgid)
		return 0;
	if (scope_to_cgroup && bpf_current_task_under_cgroup(&scope_cgroup, 0) != 1)
		return 0;

	key.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	buffer = weir_profile_active & 1;
	if (buffer) {
		key.kernel_stack_id = bpf_get_stackid(ctx, &stacks_1, 0);
		key.user_stack_id = bpf_get_stackid(ctx, &stacks_1, BPF_F_USER_STACK);
		counts = &counts_1;
	} else {
		key.kernel_stack_id = bpf_get_stackid(ctx, &stacks_0, 0);
		key.user_stack_id = bpf_get_stackid(ctx, &stacks_0, BPF_F_USER_STACK);
		counts = &counts_0;
	}
	/* An idle CPU or a user-mode tick has no kernel stack: that is not a loss. */
	if (key.kernel_stack_id < 0 && key.kernel_stack_id != -14 /* -EFAULT */)
		count_loss(WEIR_PROFILE_LOSS_KERNEL_STACK_FAILED);
	/* Kernel threads have no user stack; anyone else should. */
	task = bpf_get_current_task_btf();
	if (BPF_CORE_READ(task, mm)) {
		if (key.user_stack_id < 0)
			count_loss(WEIR_PROFILE_LOSS_USER_STACK_FAILED);
		else
			weir_stack_top_returns(ctx, task, key.stack_top);
	}

	count = bpf_map_lookup_elem(counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	if (bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST)) {
		/* Lost a race with another CPU inserting the same key, or full. */
		count = bpf_map_lookup_elem(counts, &key);
		if (count)
			__sync_fetch_and_add(count, 1);
		else
			count_loss(WEIR_PROFILE_LOSS_COUNTS_FULL);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
