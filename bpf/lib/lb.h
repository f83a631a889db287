/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The load balancer's tables and backend choice, shared by the socket load
 * balancer (socklb.h) and the north-south path at tc (nodeport.h). Both
 * objects declare these maps; the agent pins them once, and the object
 * loaded second reuses the pins, so there is one set of tables per node.
 */
#ifndef WEIR_LIB_LB_H
#define WEIR_LIB_LB_H

#include "common.h"
#include "mix.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_SLOTS);
	__type(key, struct weir_lb_key);
	__type(value, struct weir_lb_slot);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct weir_lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_LB_MAX_PICKS);
	__type(key, __u32);
	__type(value, struct weir_lb_pick);
} lb_picks SEC(".maps");

struct lb_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_LB_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct lb_maglev_table);
} lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct weir_lb_service_stats);
} lb_service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct weir_lb_backend_stats);
} lb_backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_LB_MAX_AFFINITY);
	__type(key, struct weir_lb_affinity_key);
	__type(value, struct weir_lb_affinity);
} lb_affinity SEC(".maps");

static __always_inline __u32 lb_now_seconds(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

static __always_inline const struct weir_lb_backend *lb_active_backend(__u32 id)
{
	const struct weir_lb_backend *backend = bpf_map_lookup_elem(&lb_backends, &id);

	if (!backend || backend->state != WEIR_LB_BACKEND_ACTIVE)
		return 0;
	return backend;
}

/*
 * Counts a translated connection (or one with no backend). Shared arrays
 * with atomic adds, not per-CPU ones: counting is per connection, not per
 * packet, and a per-CPU array of 262144 entries costs the agent most of a
 * second to create.
 */
static __always_inline void lb_count(__u32 service_id, __u32 backend_id)
{
	struct weir_lb_service_stats *service = bpf_map_lookup_elem(&lb_service_stats, &service_id);
	struct weir_lb_backend_stats *backend;

	if (!service)
		return;
	if (!backend_id) {
		__sync_fetch_and_add(&service->no_backend, 1);
		return;
	}
	__sync_fetch_and_add(&service->connects, 1);
	backend = bpf_map_lookup_elem(&lb_backend_stats, &backend_id);
	if (backend)
		__sync_fetch_and_add(&backend->connects, 1);
}

/*
 * Chooses a backend for a new connection to the frontend `key` (slot 0)
 * describes, and returns it (its id in *id_out), or 0 for none: the client's affinity entry while it lasts, else the Maglev
 * table at `hash`, else a random active slot. `client` identifies the
 * client for affinity (a netns cookie, or a marked IPv4 address).
 */
static __always_inline const struct weir_lb_backend *lb_pick(struct weir_lb_key *key,
							    const struct weir_lb_slot *frontend, __u64 client,
							    __u64 hash, __u32 *id_out)
{
	struct weir_lb_affinity_key affinity_key = {};
	struct weir_lb_affinity *affinity = 0;
	const struct weir_lb_backend *backend = 0;
	__u32 now = 0, id = 0;

	if (frontend->flags & WEIR_LB_F_AFFINITY) {
		affinity_key.client = client;
		affinity_key.service_id = frontend->service_id;
		now = lb_now_seconds();
		affinity = bpf_map_lookup_elem(&lb_affinity, &affinity_key);
		if (affinity && now - affinity->last_used <= frontend->affinity_timeout) {
			backend = lb_active_backend(affinity->backend_id);
			if (backend) {
				affinity->last_used = now;
				*id_out = affinity->backend_id;
				return backend;
			}
		}
	}
	if (frontend->flags & WEIR_LB_F_MAGLEV) {
		__u32 service_id = frontend->service_id;
		void *table = bpf_map_lookup_elem(&lb_maglev, &service_id);
		__u32 index = (__u32)(hash % WEIR_LB_MAGLEV_SIZE);
		__u32 *slot_id;

		if (!table)
			return 0;
		slot_id = bpf_map_lookup_elem(table, &index);
		if (!slot_id)
			return 0;
		id = *slot_id;
		backend = bpf_map_lookup_elem(&lb_backends, &id);
	} else if (frontend->picks) {
		/* An array element: no hash to compute, one cache line to fetch. */
		__u32 index = frontend->picks + bpf_get_prandom_u32() % frontend->active;
		const struct weir_lb_pick *pick = bpf_map_lookup_elem(&lb_picks, &index);

		if (!pick)
			return 0;
		id = pick->backend_id;
		backend = &pick->backend;
	} else {
		const struct weir_lb_slot *slot;

		key->slot = (__u16)(bpf_get_prandom_u32() % frontend->active) + 1;
		slot = bpf_map_lookup_elem(&lb_services, key);
		key->slot = 0;
		if (!slot)
			return 0;
		id = slot->backend_id;
		backend = &slot->backend;
	}
	if (!backend)
		return 0;
	if (frontend->flags & WEIR_LB_F_AFFINITY) {
		struct weir_lb_affinity fresh = { .backend_id = id, .last_used = now };

		bpf_map_update_elem(&lb_affinity, &affinity_key, &fresh, BPF_ANY);
	}
	*id_out = id;
	return backend;
}

#endif
