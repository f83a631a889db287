/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service faults (see bpf/api/chaos.h, ServiceChaos): in the socket load
 * balancer, before a frontend's backend is chosen, a call from a pod (or
 * from any client) under a live entry fails with the entry's errno, or is
 * sent to the black hole, for its share of calls.
 */
#ifndef WEIR_LIB_CHAOS_SERVICE_H
#define WEIR_LIB_CHAOS_SERVICE_H

#include "common.h"
#include "chaos_counters.h"
#include "socklb_quiet.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CHAOS_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weir_chaos_service_key);
	__type(value, struct weir_chaos_service);
} chaos_services SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace writes them). */
struct weir_chaos_service_key weir_chaos_service_key_layout = {};
struct weir_chaos_service weir_chaos_service_layout = {};

/*
 * The fault for a call from this process to the frontend `lb`: its own
 * pod's entry first, then every client's. 0 when none is live or the
 * draw spares the call (or the agent knows the map is empty); else the
 * action, counted for its experiment.
 */
static __always_inline __u32 chaos_service(const struct weir_lb_key *lb, __u32 *error, __u32 *slot)
{
	struct weir_chaos_service_key key = {.port = lb->port, .proto = lb->proto, .family = lb->family};
	struct weir_chaos_service *fault;

	if (lb_quiet_for(WEIR_LB_QUIET_SERVICE_FAULTS_FLAG))
		return 0;
	__builtin_memcpy(key.addr, lb->addr, sizeof(key.addr));
	key.cgroup = bpf_get_current_cgroup_id();
	fault = bpf_map_lookup_elem(&chaos_services, &key);
	if (!fault) {
		key.cgroup = 0;
		fault = bpf_map_lookup_elem(&chaos_services, &key);
	}
	if (!fault || bpf_ktime_get_ns() >= fault->end_ns)
		return 0;
	if (fault->probability != 0xffffffffu && bpf_get_prandom_u32() >= fault->probability)
		return 0;
	weir_count(&chaos_counters, fault->experiment, 1);
	*error = fault->error;
	*slot = fault->experiment;
	return fault->action;
}

/* The black hole address of the experiment in `slot`, of `family`. */
static __always_inline void chaos_blackhole_addr(__u32 *addr, __u8 family, __u32 slot)
{
	if (family == 4) {
		addr[0] = bpf_htonl(WEIR_CHAOS_BLACKHOLE4_NET | (slot & 0xffff));
		addr[1] = 0;
		addr[2] = 0;
		addr[3] = 0;
		return;
	}
	addr[0] = bpf_htonl(WEIR_CHAOS_BLACKHOLE6_FIRST);
	addr[1] = 0;
	addr[2] = 0;
	addr[3] = bpf_htonl(slot & 0xffff);
}

#endif
