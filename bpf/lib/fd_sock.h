/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The socket behind a file descriptor of the current task, for tracing
 * programs that see a system call's or a library call's descriptor
 * (runtime security's network events, the OpenSSL probes).
 */
#ifndef WEIR_LIB_FD_SOCK_H
#define WEIR_LIB_FD_SOCK_H

#include "common.h"

#define WEIR_S_IFMT 00170000
#define WEIR_S_IFSOCK 0140000

/* The socket behind the current task's descriptor `fd`, or NULL. */
static __always_inline struct sock *fd_sock(long fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file = NULL;
	struct socket *sock;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file || (BPF_CORE_READ(file, f_inode, i_mode) & WEIR_S_IFMT) != WEIR_S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	return BPF_CORE_READ(sock, sk);
}

#endif
