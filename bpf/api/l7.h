/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L7 flow events without a proxy: the pod path copies the start of a local
 * pod's DNS messages (UDP port 53) and HTTP/1.x requests and responses into
 * the flow ring, with the time since the matching request for a response;
 * the agent parses the copy (names, answers, request and status lines).
 * Seen from the client pod: a request as it leaves it, the response as it
 * is delivered to it.
 */
#ifndef WEIR_API_L7_H
#define WEIR_API_L7_H

/* How much of a message an event carries: a classic UDP DNS message
 * whole (EDNS answers past it are cut), an HTTP head's first bytes. */
#define WEIR_L7_PAYLOAD_BYTES 512
#define WEIR_L7_PENDING_MAX 65536
#define WEIR_L7_DNS_PORT 53

#define WEIR_L7_KINDS(X)                          \
	X(DNS, 0, "a DNS message over UDP")       \
	X(HTTP, 1, "an HTTP/1.x request or response head")

#define WEIR_L7_KIND_ENTRY(name, code, desc) WEIR_L7_##name = code,
enum weir_l7_kind {
	WEIR_L7_KINDS(WEIR_L7_KIND_ENTRY)
	WEIR_L7_KIND_MAX,
};
#undef WEIR_L7_KIND_ENTRY

/* Hubble's L7FlowType numbers. */
#define WEIR_L7_REQUEST 1
#define WEIR_L7_RESPONSE 2

/* What the datapath made of a pod's candidate L7 packets, per CPU. */
#define WEIR_L7_OUTCOMES(X)                                                                      \
	X(REPORTED, 0, "an L7 event was written to the flow ring")                                \
	X(UNPARSED, 1, "port 53 or an HTTP-looking segment, but not a message Weir reads (too short, not a query or answer)") \
	X(UNMATCHED, 2, "a response whose request was not seen (no latency)")                     \
	X(LOST, 3, "the flow ring was full (also counted as a lost flow event)")                   \
	X(TRUNCATED, 4, "a segment longer than the copy: reported with its first WEIR_L7_PAYLOAD_BYTES bytes")

#define WEIR_L7_OUTCOME_ENTRY(name, code, desc) WEIR_L7_OUTCOME_##name = code,
enum weir_l7_outcome {
	WEIR_L7_OUTCOMES(WEIR_L7_OUTCOME_ENTRY)
	WEIR_L7_OUTCOME_MAX,
};
#undef WEIR_L7_OUTCOME_ENTRY

/* The agent's switch (array, one entry). */
struct weir_l7_config {
	__u32 disabled;
};

/* A request waiting for its response: the client's side first. `id` is
 * the DNS message id, 0 for HTTP (matched per TCP 4-tuple). */
struct weir_l7_pending_key {
	__be32 client[4];
	__be32 server[4];
	__be16 client_port;
	__be16 server_port;
	__u16 id;
	__u8 protocol;
	__u8 family;
};

/* An L7 event: a flow event and the start of the message. A record in the
 * ring is as long as its message: the fixed part, then `len` bytes of
 * `data` (1 to WEIR_L7_PAYLOAD_BYTES); a plain flow event is shorter than
 * any, and its size tells the two apart. The peer's identity (the flow's
 * source for a response, its destination for a request) is
 * WEIR_L7_PEER_IDENTITY_UNSET: the agent finds it in its own copy of the
 * ipcache, off the packet's path. */
#define WEIR_L7_PEER_IDENTITY_UNSET 0
struct weir_l7_event {
	struct weir_flow_event flow;
	__u64 latency_ns; /* a response's: since its request; 0 unmatched */
	__u8 kind;        /* enum weir_l7_kind */
	__u8 type;        /* WEIR_L7_REQUEST or WEIR_L7_RESPONSE */
	__u16 len;        /* bytes of data that hold the message */
	__u32 pad;
	__u8 data[WEIR_L7_PAYLOAD_BYTES];
};

#endif
