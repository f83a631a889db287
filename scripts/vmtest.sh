#!/usr/bin/env bash
# Boots Debian's packaged kernels under qemu (TCG, no KVM) from a small
# initramfs holding weir, and runs Weir's kernel-facing checks on each:
# `weir probe` and the BPF_PROG_TEST_RUN fixture suites of weir-bpf. Kernels
# come from Debian's archive with `apt-get download`; nothing is installed.
# Later capabilities add their test binaries to TESTS below.
# Usage: scripts/vmtest.sh [6.1] [6.12]      (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null

KERNELS=("$@")
[ ${#KERNELS[@]} -gt 0 ] || KERNELS=(6.1 6.12)
TESTS=(node_fixtures filter_fixtures nodeport_fixtures pod_path_fixtures policy_fixtures chaos_fixtures xlb_fixtures socklb_kernel runtime_kernel)
cache=$PWD/target/vmtest
mkdir -p "$cache"

# bookworm has 6.1; 6.12 comes from bookworm-backports, read through a private list.
backports=(-o Dir::Etc::sourcelist="$cache/backports.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$cache/lists")
prepare_backports() {
  [ -d "$cache/lists/partial" ] && return
  echo "deb http://deb.debian.org/debian bookworm-backports main" > "$cache/backports.list"
  mkdir -p "$cache/lists/partial"
  apt-get -qq "${backports[@]}" update
}
kernel_deb() { # VERSION -> path of the downloaded .deb
  local version=$1 pkg opts=()
  if [ "$version" = 6.1 ]; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1)
  else
    prepare_backports
    opts=("${backports[@]}")
    pkg=$(apt-cache "${opts[@]}" search --names-only "^linux-image-${version//./\\.}\\.[0-9]+\\+deb12-amd64-unsigned\$" | awk '{print $1}' | sort -V | tail -1)
  fi
  [ -n "$pkg" ] || { echo "vmtest: no Debian package for kernel $version" >&2; exit 1; }
  ( cd "$cache" && ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get -qq "${opts[@]}" download "$pkg" 2>/dev/null )
  ls "$cache/${pkg}"_*.deb | head -1
}

echo "vmtest: building weir and the fixture suites"
cargo build -q -p weir --locked
mapfile -t test_bins < <(cargo test -q -p weir-bpf --no-run --locked --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep -E "/($(IFS='|'; echo "${TESTS[*]}"))-")

copy_with_libs() { # BINARY DEST_ROOT TARGET_PATH
  install -D -m 0755 "$1" "$2$3"
  strip --strip-debug "$2$3" 2>/dev/null || true
  ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do [ -e "$2$lib" ] || install -D -m 0755 "$lib" "$2$lib"; done
}

# Each kernel boots in a VM of its own, all at once: TCG runs each VM on one
# host thread, so two kernels on two cores take the time of one. Each VM's
# report goes to its own file, printed in order once all are done.
run_kernel() { # VERSION: boots it, runs the suites, prints the report; exit 1 on failure
  local version=$1 deb work vmlinuz root start elapsed log
  deb=$(kernel_deb "$version")
  work=$(mktemp -d)
  dpkg -x "$deb" "$work/pkg"
  vmlinuz=$(ls "$work"/pkg/boot/vmlinuz-*)
  root=$work/root
  mkdir -p "$root"/{bin,proc,sys,dev,run/netns,tmp,tests,modules}
  ln -s /run "$root/var-run" && mkdir -p "$root/var" && mv "$root/var-run" "$root/var/run"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  copy_with_libs "${CARGO_TARGET_DIR:-target}/debug/weir" "$root" /bin/weir
  copy_with_libs "$(command -v ip)" "$root" /bin/ip
  for t in "${test_bins[@]}"; do copy_with_libs "$t" "$root" "/tests/$(basename "$t" | sed 's/-[0-9a-f]*$//')"; done
  # veth for the probe's scratch pair; sch_ingress and cls_bpf for clsact.
  for module in veth sch_ingress cls_bpf; do
    find "$work/pkg/lib/modules" -name "$module.ko*" -exec cp {} "$root/modules/" \;
  done
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /modules/*; do insmod "$m"; done
ip link set lo up
export CI=true
echo "=== kernel $(uname -r)"
/bin/weir probe
for t in /tests/*; do
  echo "=== $(basename "$t")"
  "$t" --test-threads=1 2>&1
done
echo "=== vmtest done"
poweroff -f
INIT
  chmod +x "$root/init"
  ( cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz" )
  echo "vmtest: booting $(basename "$vmlinuz") under qemu TCG"
  start=$(date +%s)
  # One host thread runs both vCPUs: with multi-threaded TCG, a vCPU can run a
  # stale translation of code another vCPU has just patched, and the kernel's
  # int3-based text patching (BPF tail-call pokes) then oopses on int3.
  timeout 1800 qemu-system-x86_64 -accel tcg,thread=single -cpu max -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
    > "$cache/console-$version.log" 2>&1 || true
  elapsed=$(( $(date +%s) - start ))
  log=$cache/console-$version.log
  sed -n '/=== kernel/,/=== vmtest done/p' "$log" | grep -E '^===|^test |^test result|^CAPABILITY|runs |cannot run|panicked' 
  rm -rf "$work"
  if grep -q '=== vmtest done' "$log" && ! grep -qE 'FAILED|panicked' "$log" && [ "$(grep -c '^test result: ok' "$log")" = "${#test_bins[@]}" ]; then
    echo "vmtest: kernel $version passed in ${elapsed} s"
  else
    echo "vmtest: kernel $version FAILED in ${elapsed} s (console: $log)"
    grep -m1 -A12 -E 'Oops|BUG:|panic' "$log" || true
    return 1
  fi
}

# The kernel packages first, one at a time (apt's cache is not shared safely).
for version in "${KERNELS[@]}"; do kernel_deb "$version" >/dev/null; done
pids=()
for version in "${KERNELS[@]}"; do
  run_kernel "$version" > "$cache/report-$version.txt" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!KERNELS[@]}"; do
  wait "${pids[$i]}" || failed=1
  cat "$cache/report-${KERNELS[$i]}.txt"
done
exit $failed
