// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket load balancer: thin entry points on a cgroup's sock_addr hooks
 * (whose connect hooks also run chaos socket faults), the
 * sockops program that marks failing backends, and the iterator that ends
 * connected UDP sockets whose backend left.
 */
#include "../lib/socklb.h"
#include "../lib/socklb_end.h"
#include "../lib/socklb_health.h"
#include "../lib/chaos_connect.h"

SEC("cgroup/connect4")
int weir_lb_connect4(struct bpf_sock_addr *ctx)
{
	/* A chaos socket fault judges the address the call goes to. */
	return lb_translate(ctx, 4, true) ? chaos_connect(ctx, 4) : 0;
}

SEC("cgroup/connect6")
int weir_lb_connect6(struct bpf_sock_addr *ctx)
{
	return lb_translate(ctx, 6, true) ? chaos_connect(ctx, 6) : 0;
}

SEC("cgroup/sendmsg4")
int weir_lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return lb_translate(ctx, 4, false);
}

SEC("cgroup/sendmsg6")
int weir_lb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return lb_translate(ctx, 6, false);
}

SEC("cgroup/recvmsg4")
int weir_lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return lb_reverse(ctx, 4);
}

SEC("cgroup/recvmsg6")
int weir_lb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return lb_reverse(ctx, 6);
}

SEC("cgroup/getpeername4")
int weir_lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return lb_reverse(ctx, 4);
}

SEC("cgroup/getpeername6")
int weir_lb_getpeername6(struct bpf_sock_addr *ctx)
{
	return lb_reverse(ctx, 6);
}

/* Passive health: marks a backend that refused, reset or timed out a translated connection. */
SEC("sockops")
int weir_lb_sockops(struct bpf_sock_ops *skops)
{
	return lb_sockops(skops);
}

/* Run by the agent after a change, in each client network namespace. */
SEC("iter/udp")
int weir_lb_end_udp(struct bpf_iter__udp *ctx)
{
	return lb_end_udp(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
