/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The only contract between Weir's C datapath and its Rust userspace.
 *
 * Struct layouts reach Rust through the BTF of the compiled objects
 * (libbpf-cargo skeleton types); enum codes reach Rust through weir-bpf's
 * build.rs, which reads the X-macro registries here. Nothing is hand-copied.
 */
#ifndef WEIR_API_H
#define WEIR_API_H

#include "drop_reasons.h"
#include "traffic.h"
#include "profile.h"
#include "filter.h"
#include "service.h"
#include "runtime.h"
#include "endpoint.h"
#include "policy.h"
#include "chaos.h"
#include "chaos_dns.h"
#include "l7.h"
#include "tls.h"
#include "xlb.h"

#endif
