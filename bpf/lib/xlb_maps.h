/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP load balancer's tables (bpf/api/xlb.h) and its counting. The
 * agent writes VIPs, rings and reals in place; nothing here is reloaded
 * for a change.
 */
#ifndef WEIR_LIB_XLB_MAPS_H
#define WEIR_LIB_XLB_MAPS_H

#include "common.h"
#include "traffic.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_XLB_MAX_VIPS);
	__type(key, struct weir_xlb_vip_key);
	__type(value, struct weir_xlb_vip);
} xlb_vips SEC(".maps");

/* One block of WEIR_XLB_RING_SIZE real indexes per VIP index. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_XLB_MAX_VIPS * WEIR_XLB_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} xlb_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_XLB_MAX_REALS);
	__type(key, __u32);
	__type(value, struct weir_xlb_real);
} xlb_reals SEC(".maps");

/* Connections -> real: one table every core finds every connection in
 * (ICMP too-big, a flow moved to another core, the agent's look-ups). A
 * common LRU, not BPF_F_NO_COMMON_LRU: the per-CPU-list flavour rotates
 * its lists under a lock on every insert, 50-55 ns of each new flow; the
 * common one takes a node from the core's own free list and goes to the
 * shared list's lock about once per 128 inserts (docs/lb.md, "Cost"). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_XLB_MAX_FLOWS);
	__type(key, struct weir_xlb_flow);
	__type(value, struct weir_xlb_conn);
} xlb_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_XLB_MAX_NAT);
	__type(key, struct weir_xlb_nat_key);
	__type(value, struct weir_xlb_nat);
} xlb_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_xlb_config);
} xlb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_xlb_flood);
} xlb_flood SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_XLB_MAX_SOURCE_ROUTES);
	__type(key, struct weir_xlb_source_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} xlb_source_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_XLB_MAX_QUIC_SERVERS);
	__type(key, __u32);   /* server id */
	__type(value, __u32); /* real index */
} xlb_quic_servers SEC(".maps");

#define XLB_COUNTER_MAP(name, size)                       \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);  \
		__uint(max_entries, size);                \
		__type(key, __u32);                       \
		__type(value, struct weir_counter);       \
	} name SEC(".maps")

XLB_COUNTER_MAP(xlb_vip_stats, WEIR_XLB_MAX_VIPS);
XLB_COUNTER_MAP(xlb_real_stats, WEIR_XLB_MAX_REALS);
XLB_COUNTER_MAP(xlb_counters, WEIR_XLB_COUNTER_MAX);
XLB_COUNTER_MAP(xlb_drops, WEIR_DROP_REASON_MAX);

static __always_inline int xlb_drop(enum weir_drop_reason reason, __u64 len)
{
	weir_count(&xlb_drops, reason, len);
	weir_count(&xlb_counters, WEIR_XLB_C_DROPPED, len);
	return XDP_DROP;
}

static __always_inline const struct weir_xlb_config *xlb_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&xlb_config, &zero);
}

/* The VIP of exactly (address, port, protocol); port 0: the any-port one. */
static __always_inline const struct weir_xlb_vip *xlb_vip_at(const __u32 *addr, __u16 port, __u8 proto, __u8 family)
{
	struct weir_xlb_vip_key key = { .port = port, .proto = proto, .family = family };

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&xlb_vips, &key);
}

/* The VIP of (address, port, protocol): its port's, else the any-port one. */
static __always_inline const struct weir_xlb_vip *xlb_vip_lookup(const __u32 *addr, __u16 port, __u8 proto,
								 __u8 family)
{
	const struct weir_xlb_vip *vip = xlb_vip_at(addr, port, proto, family);

	return vip ? vip : xlb_vip_at(addr, 0, proto, family);
}

#define XLB_FLOOD_WINDOW_NS 1000000000ULL

/*
 * The flood guard (Katran's): may this core remember one more new
 * connection? At most flood_limit per window of at least a second. The
 * clock is read only when the count reaches the limit: the window then
 * ends if a second has passed since it began, else the connection is not
 * remembered. A core under its rate pays no clock read per new connection
 * (in a VM, reading the clock is the dearest step of a new flow: docs/lb.md,
 * "Cost"). Above the rate, new connections still take the ring, but a SYN
 * flood cannot evict the established connections.
 */
static __always_inline bool xlb_flood_allows(const struct weir_xlb_config *cfg)
{
	struct weir_xlb_flood *flood;
	__u32 zero = 0;
	__u64 now;

	flood = bpf_map_lookup_elem(&xlb_flood, &zero);
	if (!cfg || !flood)
		return true;
	if (flood->inserts >= cfg->flood_limit) {
		now = bpf_ktime_get_ns();
		if (now - flood->window_start_ns <= XLB_FLOOD_WINDOW_NS)
			return false;
		flood->window_start_ns = now;
		flood->inserts = 0;
		if (!cfg->flood_limit)
			return false;
	}
	flood->inserts++;
	return true;
}

#endif
