// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* HTTPS without a proxy: uprobes on OpenSSL's read and write functions,
 * attached by the agent to each libssl it finds, and the system calls that
 * tell a call's socket (see bpf/lib/tls.h). */
#include "../lib/tls.h"
#include <bpf/bpf_tracing.h>

SEC("uprobe")
int BPF_UPROBE(weir_tls_write, void *ssl, const void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, 1);
}

SEC("uprobe")
int BPF_UPROBE(weir_tls_write_ex, void *ssl, const void *buf, __u64 num, void *written)
{
	return tls_enter(ssl, buf, written, 1);
}

SEC("uprobe")
int BPF_UPROBE(weir_tls_read, void *ssl, void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, 0);
}

SEC("uprobe")
int BPF_UPROBE(weir_tls_read_ex, void *ssl, void *buf, __u64 num, void *readbytes)
{
	return tls_enter(ssl, buf, readbytes, 0);
}

/* SSL_free: the object's connection is over, and its address may come
 * back for another. (Not SSL_clear: OpenSSL calls it itself at the start
 * of every handshake, after SSL_set_fd.) */
SEC("uprobe")
int BPF_UPROBE(weir_tls_forget, void *ssl)
{
	return tls_forget(ssl);
}

/* SSL_set_fd: the connection's socket, before its first read or write. */
SEC("uprobe")
int BPF_UPROBE(weir_tls_set_fd, void *ssl, int fd)
{
	return tls_set_fd(ssl, fd);
}

/* The return of any of the four. */
SEC("uretprobe")
int BPF_URETPROBE(weir_tls_return, long ret)
{
	return tls_return(ret);
}

SEC("tp/sched/sched_process_exit")
int weir_tls_exit(void *ctx)
{
	return tls_thread_exit();
}

#define TLS_SYSCALL(name)                                            \
	SEC("tp/syscalls/sys_enter_" #name)                          \
	int weir_tls_sys_##name(struct trace_event_raw_sys_enter *ctx) \
	{                                                            \
		return tls_syscall((long)ctx->args[0]);              \
	}

TLS_SYSCALL(write)
TLS_SYSCALL(read)
TLS_SYSCALL(sendto)
TLS_SYSCALL(recvfrom)
TLS_SYSCALL(sendmsg)
TLS_SYSCALL(recvmsg)
TLS_SYSCALL(writev)
TLS_SYSCALL(readv)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
