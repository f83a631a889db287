/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L7 flow events without a proxy (see bpf/api/l7.h): a local pod's DNS
 * query (UDP to port 53) or HTTP/1.x request (a TCP segment that starts
 * with a method) as it leaves the pod, and the answer (from port 53) or
 * response (a segment that starts with "HTTP/1.") as it is delivered to
 * it. The start of the message goes to the flow ring, parsed by the agent;
 * the kernel only recognises the message and matches a response with its
 * request (DNS: client address and port, server, message id; HTTP: the
 * TCP 4-tuple, one request outstanding) for the latency.
 */
#ifndef WEIR_LIB_L7_H
#define WEIR_LIB_L7_H

#include "common.h"
#include "parse.h"
#include "policy.h"
#include "http_head.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_l7_config);
} l7_config SEC(".maps");

/* DNS queries waiting for their answer: when each was seen. An LRU list
 * per CPU rather than one shared: an insert takes no lock other CPUs
 * contend for (an answer deletes its query from whichever list holds it),
 * at the price of each CPU evicting from its own share. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, WEIR_L7_PENDING_MAX);
	__type(key, struct weir_l7_pending_key);
	__type(value, __u64);
} l7_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_L7_OUTCOME_MAX);
	__type(key, __u32);
	__type(value, __u64);
} l7_outcomes SEC(".maps");

/* Where an event is built before it is copied to the ring, only as long
 * as its message: the ring's memory is cold when written (a record a fifth
 * of a second old, read on another core since), and a whole fixed-size
 * record spread each message over more of it. Its bytes are also the one
 * copy of the message out of the packet: the head is recognised in them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_l7_event);
} l7_scratch SEC(".maps");

/* Kept whole in BTF for the skeleton (userspace reads it). */
struct weir_l7_event weir_l7_event_layout = {};

static __always_inline void l7_count(__u32 outcome)
{
	__u64 *n = bpf_map_lookup_elem(&l7_outcomes, &outcome);

	if (n)
		*n += 1;
}

/* A DNS answer's time since its query (0: not seen, counted); a query is
 * remembered. `key` arrives zeroed with the message id set. */
static __always_inline __u64 l7_dns_latency(struct weir_l7_pending_key *key, const struct weir_pkt *pkt,
					    bool egress, __u64 now)
{
	__u64 *since, latency = 0;

	key->protocol = pkt->l4_proto;
	key->family = pkt->family;
	__builtin_memcpy(key->client, egress ? pkt->src : pkt->dst, sizeof(key->client));
	__builtin_memcpy(key->server, egress ? pkt->dst : pkt->src, sizeof(key->server));
	key->client_port = egress ? pkt->sport : pkt->dport;
	key->server_port = egress ? pkt->dport : pkt->sport;
	if (egress) {
		bpf_map_update_elem(&l7_pending, key, &now, BPF_ANY);
		return 0;
	}
	since = bpf_map_lookup_elem(&l7_pending, key);
	if (since && now > *since) {
		latency = now - *since;
		bpf_map_delete_elem(&l7_pending, key);
	} else {
		l7_count(WEIR_L7_OUTCOME_UNMATCHED);
	}
	return latency;
}

/* An HTTP response's time since its request (0: not seen, counted); a
 * request is remembered. HTTP/1.x has one request outstanding on a
 * connection, kept in the client's conntrack entry (policy_check made it
 * when the connection's first packet left the client pod): a lookup, where
 * a table of its own took an insert and a delete per exchange. */
static __always_inline __u64 l7_http_latency(struct weir_ct_key *key, const struct weir_pkt *pkt, bool egress,
					     __u64 now)
{
	struct weir_ct_entry *connection;
	__u64 latency = 0;

	key->protocol = pkt->l4_proto;
	key->family = pkt->family;
	key->direction = WEIR_POLICY_EGRESS;
	__builtin_memcpy(key->src, egress ? pkt->src : pkt->dst, sizeof(key->src));
	__builtin_memcpy(key->dst, egress ? pkt->dst : pkt->src, sizeof(key->dst));
	key->sport = egress ? pkt->sport : pkt->dport;
	key->dport = egress ? pkt->dport : pkt->sport;
	connection = bpf_map_lookup_elem(&conntrack, key);
	if (egress) {
		if (connection)
			connection->http_request_ns = now;
		return 0;
	}
	if (connection && connection->http_request_ns && now > connection->http_request_ns) {
		latency = now - connection->http_request_ns;
		connection->http_request_ns = 0;
	} else {
		l7_count(WEIR_L7_OUTCOME_UNMATCHED);
	}
	return latency;
}

/*
 * Reports a local pod's DNS or HTTP/1.x message, when the packet carries
 * one: `direction` EGRESS for what the local pod `self` sends (requests),
 * INGRESS for what is delivered to it (responses). Never changes the
 * packet or its fate. A global function: verified once.
 */
__noinline int l7_observe(struct __sk_buff *skb, const struct weir_pkt *pkt, const struct weir_endpoint *self,
			  __u8 direction)
{
	/* One or the other: the verifier's stack budget. */
	union {
		struct weir_l7_pending_key dns;
		struct weir_ct_key connection;
	} key;
	struct flow_note note = {};
	const struct weir_l7_config *config;
	struct weir_l7_event *ev;
	__u32 zero = 0, off, len, lost = WEIR_FLOW_LOSS_RING_FULL;
	__u8 kind, type, doff;
	__u64 now, latency, flags, size, *n;
	bool egress = direction == WEIR_POLICY_EGRESS;

	if (!skb || !pkt || !self || !pkt->has_l4 || pkt->is_fragment)
		return 0;
	__builtin_memset(&key, 0, sizeof(key));
	if (pkt->l4_proto == IPPROTO_UDP) {
		if ((egress ? pkt->dport : pkt->sport) != bpf_htons(WEIR_L7_DNS_PORT))
			return 0;
		kind = WEIR_L7_DNS;
		off = pkt->l4_off + 8;
	} else if (pkt->l4_proto == IPPROTO_TCP) {
		kind = WEIR_L7_HTTP;
		if (bpf_skb_load_bytes(skb, pkt->l4_off + 12, &doff, 1))
			return 0;
		off = pkt->l4_off + (doff >> 4) * 4;
	} else {
		return 0;
	}
	config = bpf_map_lookup_elem(&l7_config, &zero);
	if (config && config->disabled)
		return 0;
	len = skb->len > off ? skb->len - off : 0;
	/* A TCP segment without a head's first bytes is no HTTP head. */
	if (len < 8) {
		if (kind == WEIR_L7_DNS)
			l7_count(WEIR_L7_OUTCOME_UNPARSED);
		return 0;
	}
	ev = bpf_map_lookup_elem(&l7_scratch, &zero);
	if (!ev)
		return 0;
	/* 8 to WEIR_L7_PAYLOAD_BYTES, in a form the verifier follows. */
	len = len > WEIR_L7_PAYLOAD_BYTES ? WEIR_L7_PAYLOAD_BYTES : len;
	len = ((len - 1) & (WEIR_L7_PAYLOAD_BYTES - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off, ev->data, len)) {
		if (kind == WEIR_L7_DNS)
			l7_count(WEIR_L7_OUTCOME_UNPARSED);
		return 0;
	}
	if (kind == WEIR_L7_DNS) {
		/* A header whole, and QR as the direction says: a query leaves
		 * the client, an answer reaches it. */
		if (len < 12 || !(ev->data[2] & 0x80) != egress) {
			l7_count(WEIR_L7_OUTCOME_UNPARSED);
			return 0;
		}
		key.dns.id = (__u16)ev->data[0] << 8 | ev->data[1];
	} else if (egress ? !l7_http_request(ev->data) : !l7_http_response(ev->data)) {
		return 0;
	}
	type = egress ? WEIR_L7_REQUEST : WEIR_L7_RESPONSE;
	now = bpf_ktime_get_boot_ns();
	if (kind == WEIR_L7_DNS)
		latency = l7_dns_latency(&key.dns, pkt, egress, now);
	else
		latency = l7_http_latency(&key.connection, pkt, egress, now);
	note.direction = direction;
	note.verdict = WEIR_FLOW_FORWARDED;
	note.match = WEIR_POLICY_MATCH_NONE;
	note.self_identity = self->identity;
	/* The peer's identity is the agent's to find (bpf/api/l7.h): the
	 * ipcache's trie lookup here was an eighth of a message's cost. */
	note.peer_identity = WEIR_L7_PEER_IDENTITY_UNSET;
	note.ifindex = skb->ifindex;
	/* No socket lookup here (the verifier's stack budget): the agent
	 * names an L7 event's processes from its connection's flow events. */
	flow_fill(&ev->flow, pkt, &note, now);
	ev->latency_ns = latency;
	ev->kind = kind;
	ev->type = type;
	ev->len = len;
	ev->pad = 0;
	/* As long as the message: the record's fixed part and `len` bytes. */
	size = __builtin_offsetof(struct weir_l7_event, data) + len;
	flags = flow_wakeup_flags(size);
	if (bpf_ringbuf_output(&flow_ring, ev, size, flags)) {
		n = bpf_map_lookup_elem(&flow_losses, &lost);
		if (n)
			*n += 1;
		l7_count(WEIR_L7_OUTCOME_LOST);
		return 0;
	}
	if (skb->len - off > WEIR_L7_PAYLOAD_BYTES)
		l7_count(WEIR_L7_OUTCOME_TRUNCATED);
	l7_count(WEIR_L7_OUTCOME_REPORTED);
	return 0;
}

#endif
