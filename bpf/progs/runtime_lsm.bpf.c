// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Runtime security's BPF LSM hooks, loaded only where a probe shows the
 * kernel allows them, sharing every map with runtime.bpf.c: refuse an exec
 * (bprm_check_security), a file open and a socket connect with an errno. */
#include "../lib/rt_process.h"
#include "../lib/rt_net.h"

/* An LSM hook must return 0 or a negative errno the verifier can see is
 * one. The verifier loses a value's bounds through negation, so the result
 * is built by subtractions it tracks, which the barriers keep clang from
 * folding back into a negation. */
static __always_inline int rt_lsm_errno(int err)
{
	__s64 e = err, below;

	if (e < 1 || e > 4095)
		e = 1;
	barrier_var(e);
	below = 4095 - e; /* [0, 4094] */
	barrier_var(below);
	return below - 4095; /* [-4095, -1] */
}

SEC("lsm/bprm_check_security")
int BPF_PROG(weir_rt_lsm_exec, struct linux_binprm *bprm, int ret)
{
	struct weir_rt_config *config = rt_config_get();
	struct task_struct *task = (void *)bpf_get_current_task();
	struct weir_rt_exec_event *ev;
	struct weir_rt_rule *rule;
	struct rt_judge j = {};
	struct rt_scratch *sc;
	__u32 slot = 0;

	if (ret || !config || !(config->ops & WEIR_RT_OP(WEIR_RT_EV_EXEC)) || !rt_in_scope())
		return ret;
	sc = rt_scratch();
	if (!sc)
		return 0;
	/* No arguments yet at this hook: only rules that need none are judged. */
	ev = rt_exec_begin(sc, task, bprm);
	rt_exec_subject(&j, sc, ev);
	j.subject.lsm_only = 1;
	rule = rt_judge(&j, &slot);
	if (!rule || rule->action != WEIR_RT_ACTION_DENY)
		return 0;
	ev->hdr.rule = slot + 1;
	ev->hdr.action = WEIR_RT_ACTION_DENY;
	ev->hdr.errno_ = rule->errno_;
	ev->hdr.flags |= WEIR_RT_F_LSM;
	rt_post_exec(ev);
	return rt_lsm_errno(rule->errno_);
}

SEC("lsm/file_open")
int BPF_PROG(weir_rt_lsm_file_open, struct file *file, int ret)
{
	struct weir_rt_config *config = rt_config_get();
	struct weir_rt_file_event *ev;
	struct weir_rt_rule *rule;
	struct rt_judge j = {};
	struct rt_scratch *sc;
	bool cut = false;
	__u32 slot = 0;

	/* Every open on the host passes here: leave at the first cheap test. */
	if (ret || !config || !(config->ops & WEIR_RT_OP(WEIR_RT_EV_FILE_OPEN)) || !rt_in_scope())
		return ret;
	sc = rt_scratch();
	if (!sc)
		return 0;
	ev = &sc->file;
	rt_header_current(&ev->hdr, WEIR_RT_EV_FILE_OPEN);
	ev->path_len = rt_file_path(sc, file, ev->path, &cut);
	if (cut)
		ev->hdr.flags |= WEIR_RT_F_PATH_TRUNCATED;
	rt_subject_process(sc, &j.subject, ev->hdr.pid, &ev->hdr.ppid, &ev->hdr.start_time);
	j.subject.op = WEIR_RT_EV_FILE_OPEN;
	j.subject.uid = ev->hdr.uid;
	j.subject.cgroup_id = ev->hdr.cgroup_id;
	j.subject.args = sc->slack;
	j.subject.file = ev->path;
	j.subject.file_len = ev->path_len;
	rule = rt_judge(&j, &slot);
	if (!rule)
		return 0;
	ev->hdr.rule = slot + 1;
	ev->hdr.action = rule->action;
	ev->hdr.flags |= WEIR_RT_F_LSM;
	if (rule->action == WEIR_RT_ACTION_DENY)
		ev->hdr.errno_ = rule->errno_;
	if (rt_rate_allows(slot, rule->rate_per_sec, ev->hdr.ktime))
		rt_post(ev, sizeof(*ev));
	return rule->action == WEIR_RT_ACTION_DENY ? rt_lsm_errno(rule->errno_) : 0;
}

SEC("lsm/socket_connect")
int BPF_PROG(weir_rt_lsm_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	struct weir_rt_config *config = rt_config_get();
	struct weir_rt_net_event *ev;
	struct rt_scratch *sc;
	__u16 family;
	int err;

	if (ret || !config || !(config->ops & WEIR_RT_OP(WEIR_RT_EV_CONNECT)) || !rt_in_scope())
		return ret;
	sc = rt_scratch();
	if (!sc)
		return 0;
	ev = &sc->net;
	rt_header_current(&ev->hdr, WEIR_RT_EV_CONNECT);
	__builtin_memset(ev->local_addr, 0, sizeof(ev->local_addr));
	__builtin_memset(ev->remote_addr, 0, sizeof(ev->remote_addr));
	ev->local_port = 0;
	family = BPF_CORE_READ(address, sa_family);
	if (family == RT_AF_INET) {
		struct sockaddr_in *in = (void *)address;

		ev->family = 4;
		ev->remote_addr[0] = BPF_CORE_READ(in, sin_addr.s_addr);
		ev->remote_port = bpf_ntohs(BPF_CORE_READ(in, sin_port));
	} else if (family == RT_AF_INET6) {
		struct sockaddr_in6 *in6 = (void *)address;

		ev->family = 6;
		BPF_CORE_READ_INTO(&ev->remote_addr, in6, sin6_addr.in6_u.u6_addr32);
		ev->remote_port = bpf_ntohs(BPF_CORE_READ(in6, sin6_port));
	} else {
		return 0;
	}
	ev->protocol = BPF_CORE_READ(sock, sk, sk_protocol);
	ev->sock_type = BPF_CORE_READ(sock, type);
	err = rt_net_decide(sc, ev->remote_addr, ev->remote_port, WEIR_RT_EV_CONNECT, false, true);
	return err ? rt_lsm_errno(err) : 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
