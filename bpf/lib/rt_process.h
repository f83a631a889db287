/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Process lifecycle: exec (with the binary's path from bprm->file, cwd and
 * argv), fork and exit. Exec is also where a kill rule acts: the signal is
 * sent while the task is still in the kernel, so the new program never runs
 * an instruction. Lifecycle events ignore rate limits: the agent's process
 * cache needs every one.
 */
#ifndef WEIR_LIB_RT_PROCESS_H
#define WEIR_LIB_RT_PROCESS_H

#include "rt_path.h"
#include "rt_judge.h"

#define RT_SIGKILL 9
#define RT_MNT_INTERNAL 0x4000 /* include/linux/mount.h: a kernel-internal mount (memfd, SysV shm) */

/* What a process is running, as the kernel remembers it. */
struct rt_identity {
	__u64 ino;
	__u32 dev;
	__u16 flags; /* WEIR_RT_F_FILELESS, WEIR_RT_F_LOADER */
};

static __always_inline void rt_remember(struct rt_scratch *sc, __u32 pid, __u32 ppid, __u64 exec_ktime,
					const char *path, __u16 path_len, const struct rt_identity *id)
{
	/* Built in the scratch's slack: too big for the stack. */
	struct weir_rt_proc *proc = (void *)sc->slack;

	proc->ppid = ppid;
	proc->path_len = path_len < WEIR_RT_PROC_PATH_MAX ? path_len : WEIR_RT_PROC_PATH_MAX - 1;
	proc->exec_ktime = exec_ktime;
	proc->ino = id->ino;
	proc->dev = id->dev;
	proc->flags = id->flags;
	proc->pad = 0;
	bpf_probe_read_kernel(proc->path, WEIR_RT_PROC_PATH_MAX, path);
	proc->path[WEIR_RT_PROC_PATH_MAX - 1] = 0;
	bpf_map_update_elem(&rt_procs, &pid, proc, BPF_ANY);
}

/* The parent's binary, as the kernel remembers it, into sc->parent. */
static __always_inline __u32 rt_parent_binary(struct rt_scratch *sc, __u32 ppid)
{
	struct weir_rt_proc *parent = bpf_map_lookup_elem(&rt_procs, &ppid);

	if (!parent)
		return 0;
	bpf_probe_read_kernel(sc->parent, WEIR_RT_PROC_PATH_MAX, parent->path);
	return parent->path_len < WEIR_RT_PROC_PATH_MAX ? parent->path_len : WEIR_RT_PROC_PATH_MAX;
}

static __always_inline __u16 rt_file_path(struct rt_scratch *sc, struct file *file, char *buf, bool *cut)
{
	return rt_d_path(sc, BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt), buf, cut);
}

/* A program's file: its path, or, for a file of no mount a path could
 * reach (memfd_create, then execveat), its name ("memfd:NAME") and the
 * fileless flag; its identity; and whether it was deleted. */
static __always_inline void rt_program_file(struct rt_scratch *sc, struct weir_rt_exec_event *ev, struct file *file)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	bool cut = false;

	ev->ino = BPF_CORE_READ(inode, i_ino);
	ev->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (BPF_CORE_READ(file, f_path.mnt, mnt_flags) & RT_MNT_INTERNAL) {
		long copied = bpf_probe_read_kernel_str(ev->path, 256, BPF_CORE_READ(file, f_path.dentry, d_name.name));

		ev->path_len = copied > 1 ? copied - 1 : 0;
		ev->hdr.flags |= WEIR_RT_F_FILELESS;
		return;
	}
	ev->path_len = rt_file_path(sc, file, ev->path, &cut);
	if (cut) {
		ev->hdr.flags |= WEIR_RT_F_PATH_TRUNCATED;
		rt_count(WEIR_RT_CNT_PATH_TRUNCATED);
	}
	if (BPF_CORE_READ(inode, __i_nlink) == 0)
		ev->hdr.flags |= WEIR_RT_F_DELETED;
}

/* Posts an exec event packed: its strings back to back, no slack after them. */
static __always_inline void rt_post_exec(const struct weir_rt_exec_event *ev)
{
	__u32 zero = 0, path_len = ev->path_len, cwd_len = ev->cwd_len, args_len = ev->args_len, end;
	struct weir_rt_exec_record *rec = bpf_map_lookup_elem(&rt_exec_out, &zero);

	if (!rec)
		return;
	/* Each bound is what its buffer holds; together they keep every copy
	 * inside rec->data for the verifier. */
	if (path_len > WEIR_RT_PATH_MAX)
		path_len = WEIR_RT_PATH_MAX;
	if (cwd_len > WEIR_RT_PATH_MAX)
		cwd_len = WEIR_RT_PATH_MAX;
	if (args_len > WEIR_RT_ARGS_MAX)
		args_len = WEIR_RT_ARGS_MAX;
	__builtin_memcpy(&rec->hdr, &ev->hdr, sizeof(rec->hdr));
	rec->ino = ev->ino;
	rec->dev = ev->dev;
	rec->applet_off = ev->applet_off;
	rec->applet_len = ev->applet_len;
	rec->path_len = path_len;
	rec->cwd_len = cwd_len;
	rec->args_len = args_len;
	rec->pad = 0;
	bpf_probe_read_kernel(rec->data, path_len, ev->path);
	bpf_probe_read_kernel(rec->data + path_len, cwd_len, ev->cwd);
	end = path_len + cwd_len;
	bpf_probe_read_kernel(rec->data + end, args_len, ev->args);
	end += args_len;
	rt_post(rec, offsetof(struct weir_rt_exec_record, data) + end);
}

/* What both exec hooks (the tracepoint and the LSM check) know first: who
 * execs, and the binary's path from bprm->file. */
static __always_inline struct weir_rt_exec_event *rt_exec_begin(struct rt_scratch *sc, struct task_struct *task,
								 struct linux_binprm *bprm)
{
	struct weir_rt_exec_event *ev = &sc->exec;

	rt_header_current(&ev->hdr, WEIR_RT_EV_EXEC);
	ev->hdr.ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->hdr.start_time = BPF_CORE_READ(task, start_time);
	rt_program_file(sc, ev, BPF_CORE_READ(bprm, file));
	ev->applet_off = 0;
	ev->applet_len = 0;
	ev->cwd_len = 0;
	ev->args_len = 0;
	return ev;
}

/* The judge's subject for an exec: the new binary, its parent's, its arguments. */
static __always_inline void rt_exec_subject(struct rt_judge *j, struct rt_scratch *sc, struct weir_rt_exec_event *ev)
{
	j->subject.op = WEIR_RT_EV_EXEC;
	j->subject.uid = ev->hdr.uid;
	j->subject.cgroup_id = ev->hdr.cgroup_id;
	j->subject.binary = ev->path;
	j->subject.binary_len = ev->path_len;
	j->subject.parent = sc->parent;
	j->subject.parent_len = rt_parent_binary(sc, ev->hdr.ppid);
	j->subject.args = ev->args;
	j->subject.args_len = ev->args_len;
	j->subject.file = sc->binary;
	j->subject.file_len = 0;
	j->subject.applet = ev->args + (ev->applet_off & (WEIR_RT_ARGS_MAX - 1));
	j->subject.applet_len = ev->applet_len;
	j->subject.binary_ino = ev->ino;
	j->subject.binary_dev = ev->dev;
	j->subject.fileless = !!(ev->hdr.flags & WEIR_RT_F_FILELESS);
}

/* Scans arguments for the ends and basenames of argv[0] and argv[1]. */
struct rt_argscan {
	__u64 args;
	__u32 len;
	__u32 word;
	__u32 base[2];
	__u32 end[2];
};

static long rt_argscan_step(__u64 index, void *ctx)
{
	struct rt_argscan *a = ctx;
	char c;

	/* Both bounds: older verifiers (6.1) need the constant one for the
	 * pointer arithmetic in rt_byte. */
	if (index >= WEIR_RT_ARGS_MAX || index >= a->len)
		return 1;
	c = rt_byte(a->args, (__u32)index);
	if (c == '/') {
		a->base[a->word & 1] = (__u32)index + 1;
	} else if (c == 0) {
		a->end[a->word & 1] = (__u32)index;
		if (++a->word == 2)
			return 1;
		a->base[1] = (__u32)index + 1;
	}
	return 0;
}

/* The name a program was called by: argv[0]'s basename. Multi-call
 * binaries called by their own name (argv[0] starting with "busybox" or
 * "toybox", as both check) run the applet argv[1] names: then its basename. */
static __always_inline void rt_applet(struct weir_rt_exec_event *ev)
{
	struct rt_argscan a = {.args = (__u64)(void *)ev->args, .len = ev->args_len};
	__u64 head = 0;

	bpf_loop(WEIR_RT_ARGS_MAX, rt_argscan_step, &a, 0);
	if (a.word == 0)
		return;
	bpf_probe_read_kernel(&head, sizeof(head), (const void *)(a.args + (a.base[0] & (WEIR_RT_ARGS_MAX - 1))));
	if ((head & 0x00ffffffffffffffULL) == 0x786f6279737562ULL /* "busybox" */ ||
	    (head & 0x0000ffffffffffffULL) == 0x786f62796f74ULL /* "toybox" */) {
		if (a.word == 2 && a.end[1] > a.base[1]) {
			ev->applet_off = a.base[1];
			ev->applet_len = a.end[1] - a.base[1];
		}
		return;
	}
	ev->applet_off = a.base[0];
	ev->applet_len = a.end[0] > a.base[0] ? a.end[0] - a.base[0] : 0;
}

/* Everything after the program's file: cwd, arguments, the kernel's
 * memory of the process (with `proc_flags`), the applet, the judgement (a
 * kill), the event. */
static __always_inline int rt_exec_finish(struct rt_scratch *sc, struct weir_rt_exec_event *ev,
					  struct task_struct *task, __u16 proc_flags)
{
	struct rt_judge j = {};
	struct weir_rt_rule *rule;
	unsigned long arg_start, arg_end;
	__u64 args_len;
	bool cut = false;
	__u32 slot = 0;

	ev->cwd_len = rt_d_path(sc, BPF_CORE_READ(task, fs, pwd.dentry), BPF_CORE_READ(task, fs, pwd.mnt), ev->cwd, &cut);
	if (cut)
		ev->hdr.flags |= WEIR_RT_F_CWD_TRUNCATED;
	if (BPF_CORE_READ(task, fs, pwd.dentry, d_inode, __i_nlink) == 0)
		ev->hdr.flags |= WEIR_RT_F_CWD_DELETED;

	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	args_len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (args_len > WEIR_RT_ARGS_MAX) {
		args_len = WEIR_RT_ARGS_MAX;
		ev->hdr.flags |= WEIR_RT_F_ARGS_TRUNCATED;
		rt_count(WEIR_RT_CNT_ARGS_TRUNCATED);
	}
	if (bpf_probe_read_user(ev->args, args_len, (const void *)arg_start))
		args_len = 0;
	ev->args_len = args_len;

	{
		struct rt_identity id = {
			.ino = ev->ino,
			.dev = ev->dev,
			.flags = (ev->hdr.flags & (WEIR_RT_F_FILELESS | WEIR_RT_F_LOADER)) | proc_flags,
		};

		rt_remember(sc, ev->hdr.pid, ev->hdr.ppid, ev->hdr.ktime, ev->path, ev->path_len, &id);
	}
	{
		struct weir_rt_config *config = rt_config_get();

		if (config && config->applets)
			rt_applet(ev);
	}

	rt_exec_subject(&j, sc, ev);
	rule = rt_judge(&j, &slot);
	if (rule) {
		ev->hdr.rule = slot + 1;
		ev->hdr.action = rule->action;
		/* A deny the LSM hook did not make (no LSM, or a rule on
		 * arguments, which that hook cannot see) is enforced by a kill. */
		if (rule->action == WEIR_RT_ACTION_KILL || rule->action == WEIR_RT_ACTION_DENY) {
			bpf_send_signal(RT_SIGKILL);
			ev->hdr.action = WEIR_RT_ACTION_KILL;
		}
	}
	rt_post_exec(ev);
	return 0;
}

static __always_inline int rt_on_exec(struct task_struct *task, struct linux_binprm *bprm)
{
	struct weir_rt_exec_event *ev;
	struct weir_rt_file_id file = {};
	struct rt_scratch *sc;

	if (!rt_in_scope())
		return 0;
	sc = rt_scratch();
	if (!sc)
		return 0;
	ev = rt_exec_begin(sc, task, bprm);
	file.ino = ev->ino;
	file.dev = ev->dev;
	return rt_exec_finish(sc, ev, task, bpf_map_lookup_elem(&rt_loaders, &file) ? WEIR_RT_PROC_LOADING : 0);
}

#define RT_MAP_ANONYMOUS 0x20

/* The file behind the current task's file descriptor `fd`, or NULL. */
static __always_inline struct file *rt_file_of_fd(long fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file = NULL;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* `ld.so PROGRAM`: the kernel exec'd the loader, which then maps PROGRAM
 * before anything else (glibc's and musl's both load the program they are
 * asked to run first). That first file mapping is judged and reported as
 * the exec of PROGRAM, flagged LOADER, before any of its code runs (on the
 * mmap system call's entry: nothing of it is mapped yet). Every mmap on the
 * host passes here: a process not loading leaves at one hash lookup. */
static __always_inline int rt_on_mmap_fd(long fd, long flags)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *task;
	struct weir_rt_exec_event *ev;
	struct weir_rt_proc *proc;
	struct rt_scratch *sc;
	struct file *file;

	if (fd < 0 || (flags & RT_MAP_ANONYMOUS))
		return 0;
	proc = bpf_map_lookup_elem(&rt_procs, &pid);
	if (!proc || !(proc->flags & WEIR_RT_PROC_LOADING))
		return 0;
	file = rt_file_of_fd(fd);
	if (!file)
		return 0;
	proc->flags &= ~WEIR_RT_PROC_LOADING;
	if (!rt_in_scope())
		return 0;
	sc = rt_scratch();
	if (!sc)
		return 0;
	task = (void *)bpf_get_current_task();
	ev = &sc->exec;
	rt_header_current(&ev->hdr, WEIR_RT_EV_EXEC);
	ev->hdr.ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->hdr.start_time = BPF_CORE_READ(task, start_time);
	rt_program_file(sc, ev, file);
	ev->hdr.flags |= WEIR_RT_F_LOADER;
	ev->applet_off = 0;
	ev->applet_len = 0;
	ev->cwd_len = 0;
	ev->args_len = 0;
	return rt_exec_finish(sc, ev, task, 0);
}

static __always_inline int rt_on_fork(struct task_struct *parent, struct task_struct *child)
{
	struct weir_rt_header hdr;
	struct weir_rt_proc *known;
	struct rt_scratch *sc;
	__u32 ppid;

	/* Threads share their process's identity: only new processes count. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid) || !rt_in_scope())
		return 0;
	rt_header_current(&hdr, WEIR_RT_EV_FORK);
	hdr.pid = BPF_CORE_READ(child, tgid);
	hdr.tid = hdr.pid;
	ppid = BPF_CORE_READ(parent, tgid);
	hdr.ppid = ppid;
	hdr.start_time = BPF_CORE_READ(child, start_time);

	/* The child runs its parent's binary until it execs. */
	known = bpf_map_lookup_elem(&rt_procs, &ppid);
	sc = rt_scratch();
	if (known && sc) {
		struct rt_identity id = {.ino = known->ino, .dev = known->dev, .flags = known->flags};

		rt_remember(sc, hdr.pid, ppid, known->exec_ktime, known->path, known->path_len, &id);
	}
	rt_post(&hdr, sizeof(hdr));
	return 0;
}

static __always_inline int rt_on_exit(struct task_struct *task)
{
	struct weir_rt_header hdr;
	struct rt_exit_key key = {};
	__u8 one = 1;

	/* Only the last thread of a process ends it, and when several end at
	 * once (exit_group), each may see none left: the first claim reports. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0 || !rt_in_scope())
		return 0;
	key.pid = BPF_CORE_READ(task, tgid);
	key.start_time = BPF_CORE_READ(task, group_leader, start_time);
	if (bpf_map_update_elem(&rt_exited, &key, &one, BPF_NOEXIST))
		return 0;
	rt_header_current(&hdr, WEIR_RT_EV_EXIT);
	hdr.ppid = BPF_CORE_READ(task, real_parent, tgid);
	hdr.start_time = key.start_time;
	hdr.exit_code = BPF_CORE_READ(task, exit_code);
	bpf_map_delete_elem(&rt_procs, &hdr.pid);
	rt_post(&hdr, sizeof(hdr));
	return 0;
}

#endif
