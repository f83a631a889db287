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

/* Highest user address + 1 on x86-64 (47-bit; 57-bit user space is opt-in). */
#define WEIR_USER_ADDR_END 0x800000000000ULL

/*
 * Whether the code before `ret` ends in a call instruction, as it does before
 * every return address: call rel32, and call through a register or memory
 * (ff /2 with each ModRM/SIB/displacement length). A word on the stack that
 * passes is, with rare exceptions, a return address; userspace uses one only
 * where .eh_frame says the return address is stored there.
 */
static __always_inline bool weir_follows_call(__u64 ret)
{
	__u8 b[8];

	if (ret < 4096 + 8 || ret >= WEIR_USER_ADDR_END)
		return false;
	if (bpf_probe_read_user(b, sizeof(b), (void *)(ret - 8)))
		return false;
	/* b[7] is the byte just before ret. */
	return b[3] == 0xe8 ||                                      /* call rel32 */
	       (b[6] == 0xff && (b[7] & 0xf8) == 0xd0) ||           /* call *%reg */
	       (b[6] == 0xff && (b[7] & 0xf8) == 0x10) ||           /* call *(%reg) */
	       (b[5] == 0xff && (b[6] & 0xf8) == 0x50) ||           /* call *d8(%reg) */
	       (b[2] == 0xff && (b[3] & 0xf8) == 0x90) ||           /* call *d32(%reg) */
	       (b[2] == 0xff && b[3] == 0x15) ||                    /* call *d32(%rip) */
	       (b[5] == 0xff && b[6] == 0x14) ||                    /* call *(sib) */
	       (b[4] == 0xff && b[5] == 0x54) ||                    /* call *d8(sib) */
	       (b[1] == 0xff && b[2] == 0x94);                      /* call *d32(sib) */
}

/*
 * Fills `out` with the words at the interrupted user stack pointer that look
 * like return addresses. The user registers are the sample's when it hit user
 * mode, else those saved at kernel entry (as bpf_get_stackid's user walk uses).
 */
static __always_inline void weir_stack_top_returns(struct bpf_perf_event_data *ctx,
						   struct task_struct *task,
						   __u64 out[WEIR_STACK_TOP_WORDS])
{
	__u64 words[WEIR_STACK_TOP_WORDS] = {};
	__u64 sp;

	if ((ctx->regs.csx & 3) == 3) {
		sp = ctx->regs.sp;
	} else {
		struct pt_regs *user = (struct pt_regs *)bpf_task_pt_regs(task);

		sp = BPF_CORE_READ(user, sp);
	}
	if (!sp || bpf_probe_read_user(words, sizeof(words), (void *)sp))
		return;
#pragma unroll
	for (int i = 0; i < WEIR_STACK_TOP_WORDS; i++)
		out[i] = weir_follows_call(words[i]) ? words[i] : 0;
}

#endif
