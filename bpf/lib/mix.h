/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A 64-bit finaliser (murmur3's) that spreads keys over tables and rings.
 * crates/weir-lb's hash module mirrors it for the XDP load balancer. */
#ifndef WEIR_LIB_MIX_H
#define WEIR_LIB_MIX_H

#include "common.h"

static __always_inline __u64 weir_mix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

#endif
