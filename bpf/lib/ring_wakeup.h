/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * When a record should wake its ring's reader. Weir's readers poll on a
 * short timer, so a wakeup is only needed when a backlog builds. A wakeup
 * is an interrupt the kernel raises on this CPU (an APIC write: a VM exit
 * under a hypervisor, microseconds). Asked for on every record once the
 * backlog is past the mark, it was paid on nearly every record of a busy
 * ring (the reader cannot drain before it is scheduled); so only the record
 * that carries the backlog across the mark asks. Two CPUs posting at once
 * may both ask, or (rarely) neither: the timer then reads the ring.
 */
#ifndef WEIR_LIB_RING_WAKEUP_H
#define WEIR_LIB_RING_WAKEUP_H

#include "common.h"

/* The flags for bpf_ringbuf_submit/output of a `size`-byte record about
 * to be posted to `ring` (asked before reserving it). */
static __always_inline __u64 ring_wakeup_flags(void *ring, __u64 size, __u64 mark)
{
	__u64 waiting = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);

	return waiting < mark && waiting + size >= mark ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif
