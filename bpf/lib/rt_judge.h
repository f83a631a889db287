/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Judging an operation against the live rule bank: the first rule that
 * matches decides (userspace orders kill and deny before audit, so a
 * refusal always wins). Patterns are matched with the classic one-star
 * backtracking glob, one step per bpf_loop iteration: the verifier sees
 * each callback once, however long the strings are.
 */
#ifndef WEIR_LIB_RT_JUDGE_H
#define WEIR_LIB_RT_JUDGE_H

#include "rt_state.h"

/* Enough for any 128-byte pattern against a path; past it, no match (counted). */
#define RT_GLOB_STEPS 8192

/* What is being judged. Every string points into the scratch value (see
 * struct rt_scratch), so an index masked to 1023 stays inside it. */
struct rt_subject {
	const char *binary;
	const char *parent;
	const char *args;
	const char *file;
	const char *applet;
	__u32 binary_len;
	__u32 parent_len;
	__u32 args_len;
	__u32 file_len;
	__u32 applet_len;
	__u32 binary_dev;
	__u64 binary_ino;
	__u64 cgroup_id;
	__u32 uid;
	__u32 op; /* enum weir_rt_event_type */
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 lsm_only; /* judge only rules the LSM hook enforces */
	__u8 fileless;
};

struct rt_judge {
	struct rt_subject subject;
	/* The subject's strings as plain addresses for rt_match. */
	__u64 binary;
	__u64 parent;
	__u64 args;
	__u64 file;
	__u64 applet;
	/* Their first 8 bytes, for rejecting a rule without a call. */
	__u64 binary_head;
	__u64 parent_head;
	__u64 args_head;
	__u64 file_head;
	__u64 applet_head;
	__u32 bank;
	__u32 rules;
	__u32 slot; /* out: bank * WEIR_RT_MAX_RULES + index of the decider */
	__u32 found;
};

/* Glob state. The strings are plain addresses read a byte at a time with
 * bpf_probe_read_kernel: indexing a map value would make the verifier track
 * every position exactly, and a callback whose state never repeats cannot
 * be verified. */
struct rt_glob {
	__u64 s;
	__u64 p;
	__u32 sl;
	__u32 pl;
	__u32 si;
	__u32 pi;
	__u32 star; /* pattern index after the last ANY_RUN, 0: none yet */
	__u32 mark;
	int result; /* -1 running, 0 no match, 1 match */
};

static __always_inline char rt_byte(__u64 base, __u32 index)
{
	char c = 0;

	bpf_probe_read_kernel(&c, 1, (const void *)(base + index));
	return c;
}

static long rt_glob_step(__u64 index, void *ctx)
{
	struct rt_glob *g = ctx;
	char pc = 0;

	if (g->pi < g->pl)
		pc = rt_byte(g->p, g->pi);
	if (g->si >= g->sl) {
		/* Subject consumed: only trailing ANY_RUNs may remain. */
		if (g->pi >= g->pl) {
			g->result = 1;
			return 1;
		}
		if (pc == WEIR_RT_ANY_RUN) {
			g->pi++;
			return 0;
		}
		g->result = 0;
		return 1;
	}
	if (g->pi < g->pl && pc == WEIR_RT_ANY_RUN) {
		g->pi++;
		g->star = g->pi;
		g->mark = g->si;
		return 0;
	}
	if (g->pi < g->pl && (pc == WEIR_RT_ANY_ONE || pc == rt_byte(g->s, g->si))) {
		g->si++;
		g->pi++;
		return 0;
	}
	if (g->star) {
		g->pi = g->star;
		g->mark++;
		g->si = g->mark;
		return 0;
	}
	g->result = 0;
	return 1;
}

/* Most rules fail on their length or their first bytes: those tests cost
 * one read and no loop. A global function, so the verifier checks it once
 * rather than at every one of the judge's four call sites. `s` is the
 * subject's address as a plain number (see struct rt_glob). */
__noinline int rt_match(__u64 s, __u32 sl, const struct weir_rt_pattern *pattern)
{
	struct rt_glob g = {.s = s, .sl = sl, .result = -1};
	const char *text;
	__u64 head = 0;

	if (!pattern || !pattern->len)
		return 1;
	if (pattern->literal && pattern->len != sl)
		return 0;
	if (pattern->head) {
		if (sl < pattern->head)
			return 0;
		bpf_probe_read_kernel(&head, sizeof(head), (const void *)s);
		if ((head & pattern->head_mask) != pattern->head_bits)
			return 0;
		if (pattern->literal && pattern->len <= 8)
			return 1;
	}
	text = pattern->text;
	g.pl = pattern->len;
	bpf_probe_read_kernel(&g.p, sizeof(g.p), &text);
	bpf_loop(RT_GLOB_STEPS, rt_glob_step, &g, 0);
	if (g.result < 0)
		rt_count(WEIR_RT_CNT_GLOB_STEPS);
	return g.result == 1;
}

static __always_inline bool rt_addr_in(const struct weir_rt_rule *rule, const struct rt_subject *subject)
{
	__u32 bits = rule->prefix_len;

	if (rule->family != subject->family)
		return false;
	for (int i = 0; i < 4; i++) {
		__u32 mask;

		if (bits == 0)
			return true;
		mask = bits >= 32 ? 0xffffffff : ~((1u << (32 - bits)) - 1);
		if ((bpf_ntohl(subject->addr[i]) ^ bpf_ntohl(rule->addr[i])) & mask)
			return false;
		bits = bits >= 32 ? bits - 32 : 0;
	}
	return true;
}

/* True when the pattern cannot match: wrong length for a literal, or a
 * different head. Costs no call; most rules end here. */
static __always_inline bool rt_rejects(const struct weir_rt_pattern *pattern, __u64 head, __u32 len)
{
	if (!pattern->len)
		return false;
	if (pattern->literal && pattern->len != len)
		return true;
	return pattern->head && (len < pattern->head || (head & pattern->head_mask) != pattern->head_bits);
}

static long rt_judge_step(__u64 index, void *ctx)
{
	struct rt_judge *j = ctx;
	struct rt_subject *s = &j->subject;
	struct weir_rt_rule *rule;
	bool by_identity;
	__u32 slot;

	if (index >= j->rules)
		return 1;
	slot = j->bank * WEIR_RT_MAX_RULES + (__u32)index;
	rule = bpf_map_lookup_elem(&rt_rules, &slot);
	if (!rule)
		return 1;
	if (!(rule->ops & WEIR_RT_OP(s->op)) || (s->lsm_only && !rule->lsm_exec))
		return 0;
	if ((rule->flags & WEIR_RT_R_UID) && rule->uid != s->uid)
		return 0;
	if ((rule->flags & WEIR_RT_R_FAMILY) && rule->family != s->family)
		return 0;
	if ((rule->flags & WEIR_RT_R_PORTS) && (s->port < rule->port_lo || s->port > rule->port_hi))
		return 0;
	if ((rule->flags & WEIR_RT_R_ADDR) && rt_addr_in(rule, s) == !!(rule->flags & WEIR_RT_R_NOT_ADDR))
		return 0;
	if ((rule->flags & WEIR_RT_R_FILELESS) && !s->fileless)
		return 0;
	/* A binary named exactly is also its file: another link to the same
	 * inode (a hardlink, a bind mount) is the same program. */
	by_identity = (rule->flags & WEIR_RT_R_BINARY_ID) && s->binary_ino && rule->binary_ino == s->binary_ino &&
		      rule->binary_dev == s->binary_dev;
	if ((!by_identity && rt_rejects(&rule->binary, j->binary_head, s->binary_len)) ||
	    rt_rejects(&rule->parent, j->parent_head, s->parent_len) || rt_rejects(&rule->args, j->args_head, s->args_len) ||
	    rt_rejects(&rule->file, j->file_head, s->file_len) ||
	    rt_rejects(&rule->applet, j->applet_head, s->applet_len))
		return 0;
	if (rule->flags & WEIR_RT_R_CGROUPS) {
		struct weir_rt_rule_cgroup key = {.rule = slot, .cgroup_id = s->cgroup_id};

		if (!bpf_map_lookup_elem(&rt_rule_cgroups, &key))
			return 0;
	}
	if ((!by_identity && !rt_match(j->binary, s->binary_len, &rule->binary)) ||
	    !rt_match(j->parent, s->parent_len, &rule->parent) || !rt_match(j->args, s->args_len, &rule->args) ||
	    !rt_match(j->file, s->file_len, &rule->file) || !rt_match(j->applet, s->applet_len, &rule->applet))
		return 0;
	j->slot = slot;
	j->found = 1;
	return 1;
}

/* The deciding rule for the subject, or NULL. *slot gets its bank slot. */
static __always_inline struct weir_rt_rule *rt_judge(struct rt_judge *j, __u32 *slot)
{
	struct weir_rt_config *config = rt_config_get();

	if (!config || !(config->ops & WEIR_RT_OP(j->subject.op)))
		return NULL;
	j->bank = config->generation & 1;
	j->rules = config->rules;
	j->found = 0;
	bpf_probe_read_kernel(&j->binary, sizeof(j->binary), &j->subject.binary);
	bpf_probe_read_kernel(&j->parent, sizeof(j->parent), &j->subject.parent);
	bpf_probe_read_kernel(&j->args, sizeof(j->args), &j->subject.args);
	bpf_probe_read_kernel(&j->file, sizeof(j->file), &j->subject.file);
	bpf_probe_read_kernel(&j->applet, sizeof(j->applet), &j->subject.applet);
	bpf_probe_read_kernel(&j->binary_head, 8, (const void *)j->binary);
	bpf_probe_read_kernel(&j->parent_head, 8, (const void *)j->parent);
	bpf_probe_read_kernel(&j->args_head, 8, (const void *)j->args);
	bpf_probe_read_kernel(&j->file_head, 8, (const void *)j->file);
	bpf_probe_read_kernel(&j->applet_head, 8, (const void *)j->applet);
	bpf_loop(WEIR_RT_MAX_RULES, rt_judge_step, j, 0);
	if (!j->found)
		return NULL;
	*slot = j->slot;
	return bpf_map_lookup_elem(&rt_rules, slot);
}

/* Fills the subject's process fields from what the kernel remembers of
 * `pid`: its binary into sc->binary, its parent's into sc->parent. */
static __always_inline void rt_subject_process(struct rt_scratch *sc, struct rt_subject *s, __u32 pid, __u32 *ppid,
					       __u64 *start)
{
	struct weir_rt_proc *proc = bpf_map_lookup_elem(&rt_procs, &pid), *parent = NULL;

	s->binary = sc->binary;
	s->parent = sc->parent;
	s->applet = sc->slack;
	s->binary_len = 0;
	s->parent_len = 0;
	s->applet_len = 0;
	if (!proc) {
		rt_count(WEIR_RT_CNT_PROC_UNKNOWN);
		return;
	}
	*ppid = proc->ppid;
	*start = proc->exec_ktime;
	s->binary_ino = proc->ino;
	s->binary_dev = proc->dev;
	s->fileless = !!(proc->flags & WEIR_RT_F_FILELESS);
	bpf_probe_read_kernel(sc->binary, WEIR_RT_PROC_PATH_MAX, proc->path);
	s->binary_len = proc->path_len < WEIR_RT_PROC_PATH_MAX ? proc->path_len : WEIR_RT_PROC_PATH_MAX;
	__u32 parent_pid = proc->ppid;
	parent = bpf_map_lookup_elem(&rt_procs, &parent_pid);
	if (parent) {
		bpf_probe_read_kernel(sc->parent, WEIR_RT_PROC_PATH_MAX, parent->path);
		s->parent_len = parent->path_len < WEIR_RT_PROC_PATH_MAX ? parent->path_len : WEIR_RT_PROC_PATH_MAX;
	}
}

#endif
