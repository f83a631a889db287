/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A path from the kernel's own dentries (bpf_d_path is refused to
 * tracepoints): walk from the dentry to the global root, crossing mounts,
 * remember each component's name, then write them root first. Both loops
 * are bpf_loop callbacks, verified once however deep the path. Paths past
 * RT_WALK_DEPTH components or about 500 bytes are cut and flagged.
 */
#ifndef WEIR_LIB_RT_PATH_H
#define WEIR_LIB_RT_PATH_H

#include "rt_state.h"

struct rt_walk {
	struct mount *mnt;
	struct dentry *dentry;
	__u64 *names;
	char *buf;
	__u32 depth;
	__u32 off;
	__u8 cut;
};

static long rt_walk_step(__u64 index, void *ctx)
{
	struct rt_walk *w = ctx;
	struct mount *mnt = w->mnt;
	struct dentry *dentry = w->dentry;
	struct dentry *mnt_root = BPF_CORE_READ(mnt, mnt.mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

	if (dentry == mnt_root || dentry == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (dentry != mnt_root || up == mnt)
			return 1; /* the global root */
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		return 0;
	}
	if (w->depth >= RT_WALK_DEPTH) {
		w->cut = 1;
		return 1;
	}
	w->names[w->depth & (RT_WALK_DEPTH - 1)] = (__u64)BPF_CORE_READ(dentry, d_name.name);
	w->depth++;
	w->dentry = parent;
	return 0;
}

static long rt_emit_step(__u64 index, void *ctx)
{
	struct rt_walk *w = ctx;
	__u32 at = w->off;
	long copied;

	if (index >= w->depth)
		return 1;
	if (at >= 255) {
		w->cut = 1;
		return 1;
	}
	w->buf[at & 255] = '/';
	at++;
	copied = bpf_probe_read_kernel_str(w->buf + (at & 255), 256,
					   (const void *)w->names[(w->depth - 1 - (__u32)index) & (RT_WALK_DEPTH - 1)]);
	w->off = at + (copied > 1 && copied <= 256 ? copied - 1 : 0);
	return 0;
}

/* Writes the path of (dentry, vfsmnt) into buf (WEIR_RT_PATH_MAX bytes,
 * NUL-terminated); returns its length, and sets *truncated when cut. */
static __always_inline __u16 rt_d_path(struct rt_scratch *sc, struct dentry *dentry, struct vfsmount *vfsmnt,
				       char *buf, bool *truncated)
{
	struct rt_walk w = {
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.dentry = dentry,
		.names = sc->names,
		.buf = buf,
	};

	bpf_loop(RT_WALK_DEPTH + 8, rt_walk_step, &w, 0);
	bpf_loop(RT_WALK_DEPTH, rt_emit_step, &w, 0);
	if (w.off == 0)
		buf[w.off++] = '/';
	buf[w.off & (WEIR_RT_PATH_MAX - 1)] = 0;
	if (w.cut)
		*truncated = true;
	return w.off;
}

#endif
