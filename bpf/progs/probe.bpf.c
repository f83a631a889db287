// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Tiny programs that `weir probe` loads and attaches one at a time to learn
 * what this kernel really allows. Each does nothing: success of load and
 * attach is the whole answer. Helpers are probed separately by libbpf.
 */
#include "../lib/common.h"

#define SK_PASS 1

SEC("xdp") int probe_xdp(struct xdp_md *ctx) { return XDP_PASS; }
SEC("tc") int probe_tc(struct __sk_buff *skb) { return TC_ACT_OK; }
SEC("tcx/egress") int probe_tcx(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("cgroup/connect4") int probe_connect4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg4") int probe_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg4") int probe_recvmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/getpeername4") int probe_getpeername4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sock_create") int probe_sock_create(struct bpf_sock *ctx) { return 1; }
SEC("cgroup/dev") int probe_dev(struct bpf_cgroup_dev_ctx *ctx) { return 1; }
SEC("cgroup/sysctl") int probe_sysctl(struct bpf_sysctl *ctx) { return 1; }
SEC("sockops") int probe_sockops(struct bpf_sock_ops *ctx) { return 1; }

/* sk_msg programs attach to a sockmap/sockhash, never to a hook. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} probe_sock_hash SEC(".maps");
SEC("sk_msg") int probe_sk_msg(struct sk_msg_md *msg) { return SK_PASS; }

SEC("tracepoint/sched/sched_process_exec") int probe_tracepoint(void *ctx) { return 0; }
SEC("raw_tp/sched_process_exec") int probe_raw_tp(void *ctx) { return 0; }
SEC("tp_btf/sched_process_exec") int probe_tp_btf(void *ctx) { return 0; }
SEC("perf_event") int probe_perf_event(void *ctx) { return 0; }
SEC("uprobe") int probe_uprobe(void *ctx) { return 0; }
SEC("kprobe") int probe_kprobe(void *ctx) { return 0; }
SEC("fentry/do_sys_openat2") int probe_fentry(void *ctx) { return 0; }
SEC("lsm/bprm_check_security") int probe_lsm(void *ctx) { return 0; }

/*
 * Ending sockets (the socket load balancer's connected UDP sockets to a
 * removed backend): an iter/udp program may call bpf_sock_destroy (6.5+).
 * It says at the end of the walk whether the kfunc resolved; the call is
 * verified but never made (no sequence number is that high).
 */
extern int bpf_sock_destroy(struct sock_common *sk) __weak __ksym;
SEC("iter/udp") int probe_sock_destroy(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	char has = bpf_ksym_exists(bpf_sock_destroy) ? '1' : '0';

	if (sk) {
		if (bpf_ksym_exists(bpf_sock_destroy) && ctx->meta->seq_num == ~0ULL)
			bpf_sock_destroy((struct sock_common *)sk);
		return 0;
	}
	bpf_seq_write(ctx->meta->seq, &has, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
