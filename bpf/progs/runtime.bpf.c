// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Runtime security without BPF LSM: process lifecycle on tracepoints
 * (kill at exec), network operations on cgroup hooks (connect, bind,
 * unconnected sends, socket creation: refuse with an errno) and on
 * syscall tracepoints (listen, accept: report). */
#include "../lib/rt_process.h"
#include "../lib/rt_net.h"

SEC("tp_btf/sched_process_exec")
int BPF_PROG(weir_rt_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	return rt_on_exec(task, bprm);
}

/* A file mapping (args: addr, len, prot, flags, fd, offset). */
SEC("tp/syscalls/sys_enter_mmap")
int weir_rt_mmap_file(struct trace_event_raw_sys_enter *ctx)
{
	return rt_on_mmap_fd((long)ctx->args[4], (long)ctx->args[3]);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(weir_rt_fork, struct task_struct *parent, struct task_struct *child)
{
	return rt_on_fork(parent, child);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(weir_rt_exit, struct task_struct *task)
{
	return rt_on_exit(task);
}

SEC("cgroup/connect4")
int weir_rt_connect4(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_CONNECT, 4);
}

SEC("cgroup/connect6")
int weir_rt_connect6(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_CONNECT, 6);
}

SEC("cgroup/sendmsg4")
int weir_rt_sendmsg4(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_SENDMSG, 4);
}

SEC("cgroup/sendmsg6")
int weir_rt_sendmsg6(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_SENDMSG, 6);
}

SEC("cgroup/bind4")
int weir_rt_bind4(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_BIND, 4);
}

SEC("cgroup/bind6")
int weir_rt_bind6(struct bpf_sock_addr *ctx)
{
	return rt_sock_addr(ctx, WEIR_RT_EV_BIND, 6);
}

SEC("cgroup/sock_create")
int weir_rt_socket(struct bpf_sock *sk)
{
	return rt_sock_create(sk);
}

SEC("tp/syscalls/sys_enter_listen")
int weir_rt_listen(struct trace_event_raw_sys_enter *ctx)
{
	return rt_sock_report((long)ctx->args[0], WEIR_RT_EV_LISTEN);
}

SEC("tp/syscalls/sys_exit_accept4")
int weir_rt_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return ctx->ret < 0 ? 0 : rt_sock_report(ctx->ret, WEIR_RT_EV_ACCEPT);
}

SEC("tp/syscalls/sys_exit_accept")
int weir_rt_accept(struct trace_event_raw_sys_exit *ctx)
{
	return ctx->ret < 0 ? 0 : rt_sock_report(ctx->ret, WEIR_RT_EV_ACCEPT);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
