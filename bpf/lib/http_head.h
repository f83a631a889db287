/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Whether 8 bytes start an HTTP/1.x request line (a method and its space)
 * or status line ("HTTP/1."): the pod path's L7 events (l7.h) and the
 * OpenSSL probes (tls.h) copy only such messages; the agent reads the
 * head whole and counts what it cannot.
 */
#ifndef WEIR_LIB_HTTP_HEAD_H
#define WEIR_LIB_HTTP_HEAD_H

#include "common.h"

/* Four bytes as a little-endian word (x86, Weir's one target), to compare
 * a message's first bytes with a method or "HTTP" at once. */
#define L7_WORD(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

static __always_inline bool l7_http_request(const __u8 *head)
{
	__u32 word;

	__builtin_memcpy(&word, head, 4);
	if (word == L7_WORD('G', 'E', 'T', ' ') || word == L7_WORD('P', 'U', 'T', ' '))
		return true;
	if (word == L7_WORD('P', 'O', 'S', 'T') || word == L7_WORD('H', 'E', 'A', 'D'))
		return head[4] == ' ';
	if (word == L7_WORD('P', 'A', 'T', 'C') || word == L7_WORD('T', 'R', 'A', 'C'))
		return head[5] == ' ';
	if (word == L7_WORD('D', 'E', 'L', 'E'))
		return head[6] == ' ';
	if (word == L7_WORD('O', 'P', 'T', 'I') || word == L7_WORD('C', 'O', 'N', 'N'))
		return head[7] == ' ';
	return false;
}

static __always_inline bool l7_http_response(const __u8 *head)
{
	__u32 word;

	__builtin_memcpy(&word, head, 4);
	return word == L7_WORD('H', 'T', 'T', 'P') && head[4] == '/' && head[5] == '1' && head[6] == '.';
}

#endif
