/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * CPU profiling: what the perf_event sampler counts, and why a sample can be lost.
 * Same X(NAME, CODE, "description") convention as drop_reasons.h.
 */
#ifndef WEIR_API_PROFILE_H
#define WEIR_API_PROFILE_H

#define WEIR_PROFILE_LOSSES(X)                                                          \
	X(NONE, 0, "not lost")                                                         \
	X(COUNTS_FULL, 1, "the stack-count map was full: raise --max-stacks")         \
	X(KERNEL_STACK_FAILED, 2, "the kernel stack could not be stored")              \
	X(USER_STACK_FAILED, 3, "the user stack could not be walked or stored")

#define WEIR_PROFILE_LOSS_ENTRY(name, code, desc) WEIR_PROFILE_LOSS_##name = code,
enum weir_profile_loss {
	WEIR_PROFILE_LOSSES(WEIR_PROFILE_LOSS_ENTRY)
	WEIR_PROFILE_LOSS_MAX,
};
#undef WEIR_PROFILE_LOSS_ENTRY

#define WEIR_TASK_COMM_LEN 16
/* Words read from the top of the user stack (sp, sp+8, ...) for the caller
 * of a function whose frame is not set up (see weir_stack_top_returns). */
#define WEIR_STACK_TOP_WORDS 4

/* One distinct stack of one process; the value is the number of samples. */
struct weir_stack_key {
	__u32 tgid;
	/* Negative: no stack, as -errno (kernel threads have no user stack). */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 pad;
	__u64 cgroup_id;
	char comm[WEIR_TASK_COMM_LEN];
	/* The word at user sp + 8*i where it looks like a return address (the
	 * bytes before it are a call instruction), else 0. A frame-pointer walk
	 * misses the caller of a function sampled before its frame exists (a leaf
	 * without one, a prologue); userspace picks the right word from .eh_frame. */
	__u64 stack_top[WEIR_STACK_TOP_WORDS];
};

#endif
