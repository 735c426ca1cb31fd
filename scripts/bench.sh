#!/bin/bash
# Benchmarks (not tests): build and boot times, image sizes, and strata's
# writers against the usual tools on the same input. Prints one line per
# figure; run on an idle machine (`make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
strata=${STRATA_BIN:-target/release/strata}
work=$(mktemp -d /tmp/strata-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

secs() { # command… → wall seconds, or FAILED with the command's last words
  local t0 t1 log
  log=$(mktemp)
  t0=$(date +%s.%N)
  if ! "$@" >/dev/null 2>"$log"; then
    printf 'FAILED (%s)' "$(tail -n 2 "$log" | tr '\n' ' ')"
    rm -f "$log"
    return 0
  fi
  t1=$(date +%s.%N)
  rm -f "$log"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}
size() { printf '%s apparent, %s allocated' "$(du -h --apparent-size "$1" | cut -f1)" "$(du -h "$1" | cut -f1)"; }

echo "== build: profiles/default.yaml (amd64)"
echo "cold (kernel .deb unpacked, module index scanned): $(secs "$strata" build profiles/default.yaml --out "$work/a" --cache "$work/cache-cold") s"
echo "warm (kernel from the cache):                      $(secs "$strata" build profiles/default.yaml --out "$work/a" --cache "$work/cache-cold") s"
echo "image: $(size "$work/a/metal-amd64.raw")"
echo "arm64 warm build: $(secs "$strata" build profiles/default.yaml --arch arm64 --out "$work/a" --cache "$work/cache-cold") s"

echo "== boot to verdict (TCG)"
for img in metal-amd64.raw metal-arm64.raw; do
  echo "$img: $(secs "$strata" boot "$work/a/$img") s"
done

echo "== every platform in one build (amd64)"
echo "all-platforms: $(secs "$strata" build profiles/all-platforms.yaml --out "$work/all" --cache "$work/cache-cold") s"
for f in "$work"/all/*-amd64.*; do echo "$(basename "$f"): $(size "$f")"; done

echo "== formats vs qemu-img / xz / zstd on the same 1 GiB raw"
"$strata" build tests/profiles/formats.yaml --out "$work/f" --cache "$work/cache-cold" >/dev/null 2>&1
raw=$work/f/nocloud-amd64.raw
echo "qemu-img convert -O qcow2:                 $(secs qemu-img convert -O qcow2 "$raw" "$work/q.qcow2") s"
echo "qemu-img convert -O vmdk streamOptimized:  $(secs qemu-img convert -O vmdk -o subformat=streamOptimized "$raw" "$work/q.vmdk") s"
echo "qemu-img convert -O vpc fixed:             $(secs qemu-img convert -O vpc -o subformat=fixed,force_size=on "$raw" "$work/q.vhd") s"
echo "xz -T2 -6:                                 $(secs xz -T2 -6 -k -c "$raw") s"
echo "zstd -19 -T2:                              $(secs zstd -19 -T2 -c "$raw") s"
echo "(strata writes all of these in the one build above; see docs/formats.md for per-format figures)"

echo "== squashfs: strata (backhand) vs mksquashfs on the kernel's module tree"
tree=$(ls -d "$work"/cache-cold/kernels/*/lib/modules/*-amd64 2>/dev/null | head -n1)
if [[ -n $tree ]] && command -v mksquashfs >/dev/null; then
  echo "mksquashfs zstd 15: $(secs mksquashfs "$tree" "$work/m.sqsh" -comp zstd -Xcompression-level 15 -noappend -all-root) s, $(size "$work/m.sqsh")"
  mkdir -p "$work/sq"
  cat > "$work/sq/p.yaml" <<YAML
name: sq
arch: amd64
platform: metal
os: {id: strata, version: 1.0.0}
kernel:
  deb: $PWD/.cache/debian/linux-image-amd64.deb
rootfs:
  dir: $tree
outputs: [raw]
YAML
  echo "strata build with that tree as root (squashfs zstd 15 + initramfs + disk): $(secs "$strata" build "$work/sq/p.yaml" --out "$work/sq/out" --cache "$work/cache-cold") s"
fi
