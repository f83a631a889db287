#!/usr/bin/env bash
# Regenerates bpf/vmlinux/<arch>/vmlinux.h from the running kernel's BTF.
# The header is committed so that a build never depends on the build host's kernel:
# CO-RE relocations adapt the compiled programs to whatever kernel loads them.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$(uname -m)
case "$arch" in
  x86_64) dir=x86 ;;
  aarch64) dir=arm64 ;;
  *) echo "gen-vmlinux: unsupported architecture $arch" >&2; exit 1 ;;
esac
btf=${1:-/sys/kernel/btf/vmlinux}
[ -r "$btf" ] || { echo "gen-vmlinux: $btf is not readable; this kernel was built without CONFIG_DEBUG_INFO_BTF" >&2; exit 1; }
mkdir -p "bpf/vmlinux/$dir"
out="bpf/vmlinux/$dir/vmlinux.h"
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "gen-vmlinux: wrote $out ($(wc -l < "$out") lines) from $btf ($(uname -r))"
