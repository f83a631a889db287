/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow hash that picks a ring slot, and the per-client word of the
 * outer source address. crates/weir-lb/src/hash.rs computes the same bits.
 */
#ifndef WEIR_LIB_XLB_HASH_H
#define WEIR_LIB_XLB_HASH_H

#include "common.h"
#include "mix.h"
#include "xlb_maps.h"

static __always_inline __u32 xlb_flow_hash(const struct weir_xlb_flow *flow, __u32 flags)
{
	__u32 addr = flow->src[0] ^ flow->src[1] ^ flow->src[2] ^ flow->src[3];
	__u64 port = flow->sport;

	if (flags & WEIR_XLB_VIP_F_DPORT_ONLY) {
		addr = 0;
		port = flow->dport;
	} else if (flags & WEIR_XLB_VIP_F_NO_SOURCE_PORT) {
		port = 0;
	}
	return (__u32)weir_mix64(((__u64)addr << 32) | (port << 8) | flow->proto);
}

/* The real a VIP's source routes give the client, or 0. */
static __always_inline __u32 xlb_source_real(const struct weir_xlb_vip *vip, const struct weir_xlb_flow *flow)
{
	struct weir_xlb_source_key key;
	__u32 *real;

	/* Most VIPs have none: no key built, no trie walked. */
	if (!(vip->flags & WEIR_XLB_VIP_F_SOURCE_ROUTES))
		return 0;
	key.prefixlen = 32 + 128;
	key.vip_index = vip->index;
	__builtin_memcpy(key.addr, flow->src, sizeof(key.addr));
	real = bpf_map_lookup_elem(&xlb_source_routes, &key);
	return real ? *real : 0;
}

/* The real of a new connection: the VIP's ring at the flow's hash
 * (xlb_flow_hash with the VIP's flags). */
static __always_inline __u32 xlb_ring_real(const struct weir_xlb_vip *vip, __u32 hash)
{
	__u32 slot = vip->index * WEIR_XLB_RING_SIZE + hash % WEIR_XLB_RING_SIZE;
	__u32 *real = bpf_map_lookup_elem(&xlb_rings, &slot);

	return real ? *real : 0;
}

#endif
