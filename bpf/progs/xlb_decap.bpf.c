// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The real server's half of the XDP load balancer (tc ingress): packets
 * the load balancer encapsulated lose their outer headers; everything else
 * passes untouched. It runs first and hands every packet on (TCX_NEXT), so
 * programs behind it — the node datapath — see the client's packet.
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/traffic.h"
#include "../lib/xlb_decap.h"

SEC("tcx/ingress")
int weir_xlb_decap(struct __sk_buff *skb)
{
	struct weir_pkt pkt;
	__u32 outer_len;
	__u8 inner = 0;
	__u64 len = skb->len;

	if (weir_skb_parse(skb, &pkt) != WEIR_DROP_NONE)
		return TCX_NEXT;
	if (!pkt.family || pkt.l3_off != ETH_HLEN || pkt.is_fragment)
		return TCX_NEXT;
	outer_len = xlb_outer_len(skb, &pkt, &inner);
	if (!outer_len)
		return TCX_NEXT;
	if (xlb_decap(skb, outer_len, pkt.family, inner)) {
		weir_count(&xlb_decap_drops, WEIR_DROP_XLB_DECAP_FAILED, len);
		return TC_ACT_SHOT;
	}
	weir_count(&xlb_decapsulated, 0, len);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
