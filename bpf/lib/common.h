/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What every Weir program includes: kernel types, libbpf helpers, constants
 * that exist only as uapi macros (vmlinux.h carries enums, not #defines). */
#ifndef WEIR_LIB_COMMON_H
#define WEIR_LIB_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "../api/weir_api.h"

#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_IPV6 0x86DD
#define ETH_HLEN 14

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

#define IPPROTO_ICMPV6 58

#define IPV6_NEXTHDR_HOP 0
#define IPV6_NEXTHDR_ROUTING 43
#define IPV6_NEXTHDR_FRAGMENT 44
#define IPV6_NEXTHDR_AUTH 51
#define IPV6_NEXTHDR_DEST 60

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

#endif
