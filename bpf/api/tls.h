/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * HTTPS without a proxy: uprobes on OpenSSL's SSL_write, SSL_read and
 * their _ex forms copy the start of each plaintext HTTP/1.x head a
 * process of the agent's scope writes or reads, with the socket's
 * addresses, to the agent's TLS ring. The agent parses the copy as it
 * parses the pod path's (bpf/api/l7.h), pairs a response with its request
 * and names the process.
 */
#ifndef WEIR_API_TLS_H
#define WEIR_API_TLS_H

/* How much of a message an event carries, as the pod path's L7 events. */
#define WEIR_TLS_PAYLOAD_BYTES 512
/* Threads inside an OpenSSL call at once. */
#define WEIR_TLS_CALLS_MAX 16384
/* Connections whose socket is remembered (SSL object to descriptor). */
#define WEIR_TLS_SOCKETS_MAX 65536
#define WEIR_TLS_COMM_BYTES 16
#define WEIR_TLS_EXE_BYTES 64

/* What became of calls that returned plaintext, per CPU. Calls whose
 * plaintext is no HTTP/1.x head are not counted. */
#define WEIR_TLS_OUTCOMES(X)                                                                                 \
	X(REPORTED, 0, "an HTTP/1.x head written or read through OpenSSL was reported")                      \
	X(CUT, 1, "a reported message was longer than WEIR_TLS_PAYLOAD_BYTES and was cut to it")            \
	X(LOST, 2, "the TLS ring was full: the message was lost")                                            \
	X(NO_SOCKET, 3, "no socket seen under the call nor before on its connection: the message was lost")  \
	X(NOT_INET, 4, "the call's descriptor is no IPv4/IPv6 socket: the message was not reported")        \
	X(NESTED, 5, "an OpenSSL call inside another on the same thread, left to the outer one")             \
	X(CALLS_FULL, 6, "more threads inside OpenSSL calls at once than the table holds: the call was lost")

#define WEIR_TLS_OUTCOME_ENTRY(name, code, desc) WEIR_TLS_OUTCOME_##name = code,
enum weir_tls_outcome {
	WEIR_TLS_OUTCOMES(WEIR_TLS_OUTCOME_ENTRY)
	WEIR_TLS_OUTCOME_MAX,
};
#undef WEIR_TLS_OUTCOME_ENTRY

/* One plaintext HTTP/1.x head, as the process wrote or read it. */
struct weir_tls_event {
	__u64 time_ns;  /* CLOCK_BOOTTIME, when the call returned (the flows' clock) */
	__u64 ssl;      /* the SSL object: one per connection in the process */
	__u64 start_ns; /* the process's start, CLOCK_MONOTONIC (with tgid: which process) */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__s32 fd;
	__be32 local[4]; /* IPv4 in [0] */
	__be32 remote[4];
	__u16 local_port; /* host order */
	__u16 remote_port;
	__u8 family;      /* 4 or 6 */
	__u8 write;       /* 1: SSL_write, 0: SSL_read */
	__u16 len;        /* bytes of data that hold the message */
	__u32 bytes;      /* what the call moved (len, unless cut) */
	char comm[WEIR_TLS_COMM_BYTES];
	char exe[WEIR_TLS_EXE_BYTES]; /* the program file's name (its last component) */
	__u8 data[WEIR_TLS_PAYLOAD_BYTES];
};

#endif
