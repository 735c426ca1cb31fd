#!/bin/bash
# `make bench`: strata against the peers' tool pipeline on a realistic
# composition (docs/performance.md), in two configs:
#   xz    squashfs xz,          initramfs xz,   AWS raw.xz   (Flatcar, Talos < 1.8)
#   zstd  squashfs zstd -15,    initramfs zstd, AWS raw.zst  (Talos >= 1.8)
# Inputs (made once by bench-inputs.sh, kept in BENCH_CACHE, default
# .cache/bench): a debootstrap'd Debian 12 root and five extensions made from
# Debian packages, Debian's kernel, strata's guest init, systemd-boot.
# Outputs, the same for everyone: raw, qcow2, OVA, raw.xz or raw.zst, ISO of
# platform aws (2 GiB GPT disk: ESP + DATA).
# Per config it times, under GNU time (wall, user+sys CPU, peak RSS of the
# largest process):
#   1. the peers' pipeline (bench-peers.sh),
#   2. mksquashfs alone on the same trees with the same settings (the floor),
#   3. strata with a fresh cache, then with nothing changed, then after one
#      extension changed,
# and prints markdown tables: the runs side by side, and the output sizes.
# Not a test: run it on a machine as idle as you can get, and say if it was not.
# Environment: BENCH_CACHE, BENCH_CONFIGS ("xz zstd"), BENCH_WORK (kept
# if given; default a temporary directory, removed), STRATA_BIN,
# BENCH_PAIRS (default 1): how many times the floor and strata's cold build
# run, alternately, for the cold / floor ratio of each pair and its median
# (on a shared or throttled machine one pair can be off by several percent).
# `BENCH_WORK=DIR bench.sh --report` prints the tables of a run kept in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
strata=${STRATA_BIN:-target/release/strata}
inputs=${BENCH_CACHE:-.cache/bench}
configs=${BENCH_CONFIGS:-xz zstd}
pairs=${BENCH_PAIRS:-1}
[[ $pairs =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_PAIRS must be a positive number, not '$pairs'" >&2; exit 2; }
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
KERNEL_DEB=.cache/debian/linux-image-amd64.deb
INIT=target/x86_64-unknown-linux-musl/release/strata-init
BOOTLOADER=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
# The extension changed for the one-extension rebuild.
CHANGED_EXT=frr
NAME=aws-amd64
OUTPUTS=(raw qcow2 ova raw.WRAP iso)

if [[ -n ${BENCH_WORK:-} ]]; then
  work=$BENCH_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d /tmp/strata-bench.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi

die() { echo "bench: $*" >&2; exit 1; }

# Every tool either pipeline uses; a missing one fails the benchmark rather
# than dropping a row (`make deps` installs them all).
require() {
  local t missing=()
  for t in mksquashfs cpio xz zstd mkfs.vfat mmd mcopy sfdisk dd qemu-img tar xorriso \
    dpkg-deb depmod modprobe mknod debootstrap apt-get /usr/bin/time; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (run \`make deps\`)"
  for f in "$strata" "$KERNEL_DEB" "$INIT" "$BOOTLOADER"; do
    [[ -f $f ]] || die "missing input $f (run \`make test-inputs strata\`)"
  done
}

# The strata profile of config $1: the same trees, settings and outputs as
# the peers' pipeline. Extensions in the same (sorted) order.
write_profile() {
  local config=$1 file=$2 ext wrap=${1/zstd/zst}
  local outs=("${OUTPUTS[@]/WRAP/$wrap}")
  {
    echo "name: bench"
    echo "arch: amd64"
    echo "platform: aws"
    echo "os: {id: debian, version: \"12\"}"
    echo "kernel: {deb: $PWD/$KERNEL_DEB}"
    echo "rootfs: {dir: $(realpath "$inputs/debian-root"), compression: $config}"
    echo "extensions:"
    for ext in "$inputs"/ext/*/; do
      # Debian packages install under /usr, beyond Talos' allow-list.
      echo "  - {dir: $(realpath "$ext"), allow_paths: [/usr]}"
    done
    (IFS=,; echo "outputs: [${outs[*]}]")
    echo "initramfs: {compression: $config}"
  } >"$file"
}

# measure LABEL command…: runs the command under GNU time; records
# "wall user sys maxrss_kib load1" in $work/LABEL.time. A failure stops the benchmark.
measure() {
  local label=$1; shift
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "bench: $label (load $load)" >&2
  if ! /usr/bin/time -f "%e %U %S %M" -o "$work/$label.time" "$@" >"$work/$label.log" 2>&1; then
    tail -n 20 "$work/$label.log" >&2
    die "$label failed (log above)"
  fi
  echo "$(tail -n1 "$work/$label.time") $load" >"$work/$label.time"
}

# record_sizes DIR LABEL: "file apparent allocated" of each output in
# $work/LABEL.sizes, since the rebuilds after the cold one overwrite them.
record_sizes() {
  (cd "$1" && stat -c '%n %s %b' "$NAME".*) >"$work/$2.sizes"
}

# size_of DIR LABEL FILE: "apparent allocated" bytes, as recorded for LABEL, else as now.
size_of() {
  local line
  if [[ -f $work/$2.sizes ]]; then
    line=$(awk -v f="$3" '$1 == f { print $2, $3 * 512 }' "$work/$2.sizes")
  elif [[ -f $1/$3 ]]; then
    line=$(stat -c '%s %b' "$1/$3" | awk '{ print $1, $2 * 512 }')
  fi
  [[ -n ${line:-} ]] || die "no $3 in $1"
  echo "$line"
}

# Content for the changed extension that no earlier run had, so that no
# cache can know it.
change_extension() {
  mkdir -p "$inputs/ext/$CHANGED_EXT/rootfs/usr/share"
  date +%s.%N >"$inputs/ext/$CHANGED_EXT/rootfs/usr/share/bench-stamp"
}

run_config() {
  local c=$1 peers=(scripts/bench-peers.sh "$1" "$inputs" "$KERNEL_DEB" "$INIT" "$BOOTLOADER")
  local profile=$work/$c.yaml out=$work/strata-$c cache=$work/cache-$c
  write_profile "$c" "$profile"
  measure "$c-peers" "${peers[@]}" "$work/peers-$c"
  measure "$c-floor" "${peers[@]}" "$work/floor-$c" squashfs
  rm -rf "$cache" "$out"
  measure "$c-cold" "$strata" build "$profile" --out "$out" --cache "$cache"
  record_sizes "$out" "$c-cold"
  measure "$c-noop" "$strata" build "$profile" --out "$out" --cache "$cache"
  change_extension
  measure "$c-one-ext" "$strata" build "$profile" --out "$out" --cache "$cache"
  local i
  for ((i = 2; i <= pairs; i++)); do
    measure "$c-floor-$i" "${peers[@]}" "$work/floor-$c" squashfs
    rm -rf "$cache-$i" "$out-$i"
    measure "$c-cold-$i" "$strata" build "$profile" --out "$out-$i" --cache "$cache-$i"
    rm -rf "$cache-$i" "$out-$i"
  done
}

# The cold / floor ratios (wall and CPU) of each pair of runs, in the order
# they ran, and their medians; nothing with one pair (the table has it).
report_pairs() {
  local c=$1 i suffix walls=() cpus=()
  ((pairs > 1)) || return 0
  for ((i = 1; i <= pairs; i++)); do
    suffix=""
    if ((i > 1)); then suffix=-$i; fi
    walls+=("$(ratio "$(field "$c-cold$suffix" 1)" "$(field "$c-floor$suffix" 1)" 3)")
    cpus+=("$(ratio "$(cpu "$c-cold$suffix")" "$(cpu "$c-floor$suffix")" 3)")
  done
  echo
  echo "- cold / floor, $pairs pairs run alternately: wall ${walls[*]} (median $(median "${walls[@]}")); CPU ${cpus[*]} (median $(median "${cpus[@]}"))"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# field LABEL N: the Nth figure of a run (1 wall, 2 user, 3 sys, 4 RSS KiB, 5 load).
field() { cut -d' ' -f"$2" "$work/$1.time"; }
cpu() { awk '{ printf "%.1f", $2 + $3 }' "$work/$1.time"; }
ratio() { # a b [decimals]
  awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b > 0) printf "%.*f", d, a / b; else printf "-" }'
}

report_runs() {
  local c=$1 run label pw pc pr w cc r
  pw=$(field "$c-peers" 1) pc=$(cpu "$c-peers") pr=$(field "$c-peers" 4)
  echo
  echo "### $c"
  echo
  echo "| run | wall s | CPU s (user+sys) | peak RSS MiB | load at start | wall / peers | CPU / peers | RSS / peers |"
  echo "|---|---|---|---|---|---|---|---|"
  for run in "peers:peers' pipeline" "floor:mksquashfs alone (the floor)" "cold:strata cold" \
    "noop:strata, nothing changed" "one-ext:strata, one extension changed ($CHANGED_EXT)"; do
    label=$c-${run%%:*}
    w=$(field "$label" 1) cc=$(cpu "$label") r=$(field "$label" 4)
    printf '| %s | %.1f | %s | %d | %s | %s | %s | %s |\n' "${run#*:}" "$w" "$cc" $((r / 1024)) \
      "$(field "$label" 5)" "$(ratio "$w" "$pw")" "$(ratio "$cc" "$pc")" "$(ratio "$r" "$pr")"
  done
  # strata's own account of where the time went (its last line).
  echo
  for run in cold noop one-ext; do
    echo "- strata $run: $(grep -h '^built in' "$work/$c-$run.log" || echo '(no summary line)')"
  done
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# Sizes of the outputs of the peers and of strata's cold build: apparent,
# and allocated (the raw disk is sparse).
report_sizes() {
  local c=$1 o f p s line wrap=${1/zstd/zst}
  echo
  echo "| $c output | peers MiB (allocated) | strata MiB (allocated) | strata / peers |"
  echo "|---|---|---|---|"
  for o in "${OUTPUTS[@]/WRAP/$wrap}"; do
    f=$NAME.$o
    # Assignments, not process substitutions: a missing output stops the report.
    line=$(size_of "$work/peers-$c" "$c-peers" "$f")
    read -r -a p <<<"$line"
    line=$(size_of "$work/strata-$c" "$c-cold" "$f")
    read -r -a s <<<"$line"
    printf '| %s | %s (%s) | %s (%s) | %s |\n' "$f" "$(mib "${p[0]}")" "$(mib "${p[1]}")" \
      "$(mib "${s[0]}")" "$(mib "${s[1]}")" "$(ratio "${s[0]}" "${p[0]}" 3)"
  done
}

describe_machine() {
  echo "## strata bench, $(date -u +%F\ %H:%M) UTC, strata $(git describe --always --dirty 2>/dev/null || echo '?')"
  echo
  echo "- machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM"
  local e exts=()
  for e in "$inputs"/ext/*/; do
    exts+=("$(basename "$e") $(du -sm --apparent-size "$e" | cut -f1) MiB")
  done
  echo "- root: $(du -sm --apparent-size "$inputs/debian-root" | cut -f1) MiB (debootstrap bookworm);" \
    "extensions: $(IFS=,; echo "${exts[*]}" | sed 's/,/, /g'):" \
    "$(du -sm --apparent-size "$inputs/ext" | cut -f1) MiB together"
  echo "- load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# The tables, from the .time and .log files in $work; a config whose runs
# did not all finish is named as such.
report() {
  if [[ -f $work/machine.md ]]; then cat "$work/machine.md"; else describe_machine; fi
  for c in $configs; do
    if [[ ! -f $work/$c-one-ext.time ]]; then
      printf '\n### %s\n\nnot measured: the run did not finish\n' "$c"
      continue
    fi
    report_runs "$c"
    report_pairs "$c"
    report_sizes "$c"
  done
}

# `bench.sh --report` prints the tables of an earlier run kept in BENCH_WORK.
main() {
  if [[ ${1:-} == --report ]]; then
    [[ -n ${BENCH_WORK:-} ]] || die "--report needs BENCH_WORK, the directory of a run"
    report
    return
  fi
  require
  scripts/bench-inputs.sh "$inputs"
  for c in $configs; do
    run_config "$c"
  done
  describe_machine >"$work/machine.md"
  report
}

# One line, so that bash has read the whole file before it runs: editing the
# script during a (long) run does not change what the run does.
main "$@"; exit
