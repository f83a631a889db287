/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS faults (DNSChaos): a selected pod's DNS queries (UDP to port 53)
 * whose name matches one of the entry's patterns are answered by the pod
 * path itself with a response code, or held by the delay line. Keyed by
 * the sending pod's address (struct weir_chaos_key, dst all zero), whatever
 * server it asks. Each entry carries its end time, as the pair faults do.
 */
#ifndef WEIR_API_CHAOS_DNS_H
#define WEIR_API_CHAOS_DNS_H

#define WEIR_CHAOS_DNS_MAX_PATTERNS 8
/* A pattern's text, and the normalised query name: DNS names have at most
 * 253 characters. */
#define WEIR_CHAOS_DNS_NAME_BYTES 256
#define WEIR_CHAOS_DNS_PORT 53

/* A name pattern, Chaos Mesh's: `?` matches any one character; with
 * `wildcard` (a trailing `*`) the text is a prefix, else the whole name.
 * Lower case, without the trailing dot. */
struct weir_chaos_dns_pattern {
	__u16 len;
	__u8 wildcard;
	__u8 pad;
	__u8 text[WEIR_CHAOS_DNS_NAME_BYTES];
};

struct weir_chaos_dns {
	__u64 end_ns;      /* as weir_chaos_entry's */
	__u32 experiment;  /* slot in chaos_counters */
	__u32 probability; /* of 2^32: the share of matching queries; 0xffffffff all */
	/* The answer's DNS response code (2 SERVFAIL, 3 NXDOMAIN); 0: the
	 * query goes to the delay line instead. */
	__u32 rcode;
	__u32 patterns;    /* how many of `pattern` hold; 0: every name */
	struct weir_chaos_dns_pattern pattern[WEIR_CHAOS_DNS_MAX_PATTERNS];
};

#endif
