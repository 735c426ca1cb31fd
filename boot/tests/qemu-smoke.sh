#!/usr/bin/env bash
# Boots strata-init for real: builds the static init, assembles test
# initramfs images by hand (busybox root squashfs + two extension squashfs
# images + the Debian kernel's loop/squashfs/overlay modules) and boots them
# with QEMU (TCG), judging the guest's STRATA report lines.
#
# Scenarios:
#   smoke        strata.smoke=1, two layers: all ok, expected probes, power-off
#   smoke-bare   strata.smoke=1, no extensions.yaml: ok, zero layers
#   smoke-broken strata.smoke=1, second layer is not a squashfs: ok=false,
#                mount-layer error, the first layer still checked
#   switch       no smoke: switch_root into busybox init, whose rcS proves
#                the merged root, the moved API mounts and the top layer
#   fatal        no smoke, init=/no/such/init: init error, ok=false, the
#                fatal message, a power-off after 5 s and no kernel panic
#
# Usage: boot/tests/qemu-smoke.sh            (ARCH=x86_64 by default)
#        ARCH=aarch64 boot/tests/qemu-smoke.sh
#        KEEP=1 ... keeps the work directory; WORK=dir picks it.
# Needs: cargo + the musl target, dpkg-deb, mksquashfs, modinfo (kmod),
# python3, qemu-system-$ARCH, and the Debian .debs in .cache/debian/.
# Product code never runs these tools; this is a test judge only.
set -euo pipefail

ARCH=${ARCH:-x86_64}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=$REPO/.cache/debian
TIMEOUT=${TIMEOUT:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

case $ARCH in
x86_64)
    DEB_ARCH=amd64
    QEMU=(qemu-system-x86_64 -accel tcg -m 1024)
    CONSOLE=ttyS0
    ;;
aarch64)
    DEB_ARCH=arm64
    QEMU=(qemu-system-aarch64 -M virt -cpu cortex-a57 -accel tcg -m 1024)
    CONSOLE=ttyAMA0
    ;;
*)
    echo "unsupported ARCH=$ARCH (x86_64 or aarch64)" >&2
    exit 2
    ;;
esac

for tool in cargo dpkg-deb mksquashfs modinfo python3 "${QEMU[0]}"; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

WORK=${WORK:-$(mktemp -d "/tmp/strata-boot-smoke.XXXXXX")}
mkdir -p "$WORK"
if [[ -z ${KEEP:-} ]]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "work directory: $WORK"
fi

log() { echo "== $*"; }

# --- inputs -----------------------------------------------------------------
log "building strata-init for $ARCH"
(cd "$REPO" && cargo build -q -p strata-boot --release --target "$ARCH-unknown-linux-musl")
INIT=$CARGO_TARGET_DIR/$ARCH-unknown-linux-musl/release/strata-init
file "$INIT" | grep -q "statically linked\|static-pie linked" || { echo "$INIT is not static" >&2; exit 1; }

log "extracting kernel and busybox ($DEB_ARCH)"
KDEB=$(ls "$CACHE"/linux-image-*-"$DEB_ARCH"_*.deb | head -n1)
BDEB=$(ls "$CACHE"/busybox-static_*_"$DEB_ARCH".deb | head -n1)
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BDEB" "$WORK/busybox"
VMLINUZ=$(ls "$WORK"/kernel/boot/vmlinuz-* | head -n1)
RELEASE=${VMLINUZ##*/vmlinuz-}
MODDIR=/lib/modules/$RELEASE

# Resolves the wanted modules and their `depends=` (dependencies first).
declare -A SEEN=()
ORDER=()
add_module() {
    local name=$1 file dep
    [[ -n ${SEEN[$name]:-} ]] && return
    SEEN[$name]=1
    file=$(find "$WORK/kernel$MODDIR" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -n1)
    [[ -n $file ]] || { echo "module $name not found in $KDEB" >&2; exit 1; }
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do
        add_module "$dep"
    done
    ORDER+=("${file#"$WORK/kernel"}")
}
for m in loop squashfs overlay; do add_module "$m"; done

# --- root and extension trees -------------------------------------------------
log "making squashfs images"
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,sbin,etc/init.d,dev,proc,sys,run,tmp,usr/local/bin}
cp "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
for applet in sh cat echo grep ls mount poweroff sync sleep head; do
    ln -s busybox "$ROOT/bin/$applet"
done
ln -s ../bin/busybox "$ROOT/sbin/init"
: >"$ROOT/etc/extensions.yaml"
printf '::sysinit:/etc/init.d/rcS\n' >"$ROOT/etc/inittab"
cat >"$ROOT/etc/init.d/rcS" <<'EOF'
#!/bin/sh
echo "SMOKE-RCS pid=$$ comm=$(cat /proc/1/comm)"
grep -q '^overlay / overlay ' /proc/mounts && echo "SMOKE-ROOT overlay"
for d in /dev /proc /sys /run; do
    grep -q " $d " /proc/mounts && echo "SMOKE-MOUNT $d"
done
echo "SMOKE-HELLO $(/usr/local/bin/hello)"
echo "SMOKE-EXT layers=$(grep -c 'image:' /etc/extensions.yaml)"
poweroff -f
EOF
chmod 755 "$ROOT/etc/init.d/rcS"

L0=$WORK/ext0
mkdir -p "$L0/usr/local/bin" "$L0/usr/local/share/hello"
printf '#!/bin/sh\necho hello from 00\n' >"$L0/usr/local/bin/hello"
printf 'hello readme\n' >"$L0/usr/local/share/hello/README"
chmod 755 "$L0/usr/local/bin/hello"
L1=$WORK/ext1
mkdir -p "$L1/usr/local/bin" "$L1/usr/local/share/world"
printf '#!/bin/sh\necho hello from 01\n' >"$L1/usr/local/bin/hello"
printf 'world data\n' >"$L1/usr/local/share/world/data"
chmod 755 "$L1/usr/local/bin/hello"

SQ=(-all-root -noappend -no-progress -quiet)
mksquashfs "$ROOT" "$WORK/rootfs.sqsh" -comp zstd "${SQ[@]}"
mksquashfs "$L0" "$WORK/00-hello.sqsh" -comp xz "${SQ[@]}"
mksquashfs "$L1" "$WORK/01-world.sqsh" -comp zstd "${SQ[@]}"
cat >"$WORK/extensions.yaml" <<'EOF'
layers:
  - image: 00-hello.sqsh
    metadata:
      name: hello
      version: 1.0.0
      author: strata tests
      description: says hello
      compatibility:
        talos:
          version: ">= 1.0.0"
  - image: 01-world.sqsh
    metadata:
      name: world
      version: "2.1"
      author: strata tests
      description: overrides hello
EOF

# --- initramfs -------------------------------------------------------------
# mkinitrd OUT [name=hostpath ...]: a newc cpio with the fixed skeleton,
# /init, the modules and the given extra files, all owned by root, mtime 0.
mkinitrd() {
    local out=$1
    shift
    local args=("init=$INIT")
    local m
    for m in "${ORDER[@]}"; do args+=("${m#/}=$WORK/kernel$m"); done
    printf '%s\n' "# loaded in this order, dependencies first" "${ORDER[@]}" >"$WORK/modules.load"
    args+=("etc/strata/modules.load=$WORK/modules.load" "$@")
    python3 - "$out" "${args[@]}" <<'EOF'
import os, sys
out, files = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
entries = []  # (name, mode, rdev, data)
dirs = {"dev", "proc", "sys", "run", "tmp", "etc", "lib"}
for name in files:
    parts = name.split("/")
    for i in range(1, len(parts)):
        dirs.add("/".join(parts[:i]))
for d in sorted(dirs):
    entries.append((d, 0o040755, (0, 0), b""))
entries.append(("dev/console", 0o020600, (5, 1), b""))
for name in sorted(files):
    with open(files[name], "rb") as f:
        data = f.read()
    mode = 0o100755 if name == "init" else 0o100644
    entries.append((name, mode, (0, 0), data))
with open(out, "wb") as f:
    def put(ino, name, mode, rdev, data):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0]
        hdr = b"070701" + b"".join(b"%08x" % v for v in fields)
        f.write(hdr + raw + b"\0" * (-(len(hdr) + len(raw)) % 4))
        f.write(data + b"\0" * (-len(data) % 4))
    for ino, (name, mode, rdev, data) in enumerate(entries, 1):
        put(ino, name, mode, rdev, data)
    put(0, "TRAILER!!!", 0, (0, 0), b"")
EOF
}

log "making initramfs images"
mkinitrd "$WORK/full.cpio" "rootfs.sqsh=$WORK/rootfs.sqsh" "00-hello.sqsh=$WORK/00-hello.sqsh" \
    "01-world.sqsh=$WORK/01-world.sqsh" "extensions.yaml=$WORK/extensions.yaml"
mkinitrd "$WORK/bare.cpio" "rootfs.sqsh=$WORK/rootfs.sqsh"
head -c 65536 /dev/urandom >"$WORK/garbage.sqsh"
mkinitrd "$WORK/broken.cpio" "rootfs.sqsh=$WORK/rootfs.sqsh" "00-hello.sqsh=$WORK/00-hello.sqsh" \
    "01-world.sqsh=$WORK/garbage.sqsh" "extensions.yaml=$WORK/extensions.yaml"

# --- boot and judge --------------------------------------------------------
# boot NAME INITRD APPEND: runs QEMU until it powers off (or TIMEOUT), saves
# the serial log to $WORK/NAME.log and prints the seconds to the done line.
boot() {
    local name=$1 initrd=$2 append=$3
    python3 - "$WORK/$name.log" "$TIMEOUT" "${QEMU[@]}" -nographic -no-reboot \
        -kernel "$VMLINUZ" -initrd "$initrd" -append "console=$CONSOLE $append" <<'EOF'
import subprocess, sys, threading, time
log, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
start = time.monotonic()
done_at = None
with open(log, "w") as out:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        out.write(line)
        if done_at is None and 'STRATA {"event":"done"' in line:
            done_at = time.monotonic() - start
    proc.wait()
    timer.cancel()
total = time.monotonic() - start
if total >= timeout:
    sys.exit(f"timeout: QEMU did not power off within {timeout:.0f}s, see {log}")
print(f"boot-to-done {done_at:.1f}s, until power-off {total:.1f}s" if done_at else f"no done line ({total:.1f}s)")
EOF
}

# judge LOG SCENARIO: checks the report (and, for switch, the busybox output).
judge() {
    python3 - "$1" "$2" "${ORDER[@]}" <<'EOF'
import json, os, sys
log, scenario, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(log, errors="replace").read()
events = []
for line in text.splitlines():
    at = line.find("STRATA {")
    if at >= 0:
        events.append(json.JSONDecoder().raw_decode(line[at + 7:])[0])
fail = []
def expect(cond, what):
    if not cond:
        fail.append(what)
kinds = [e["event"] for e in events]
expect(kinds[:1] == ["start"], f"start first: {kinds}")
expect(kinds[-1:] == ["done"], f"done last: {kinds}")
mods = [e for e in events if e["event"] == "module"]
want = [os.path.basename(m)[:-3].replace("-", "_") for m in modules]
expect([m["name"] for m in mods] == want, f"modules {mods}")
expect(all(m["loaded"] for m in mods), f"modules loaded {mods}")
layers = [e for e in events if e["event"] == "layer"]
errors = [e for e in events if e["event"] == "error"]
done = events[-1] if events else {}
smoke = scenario not in ("switch", "fatal")
if scenario in ("smoke", "switch"):
    expect(errors == [], f"no errors: {errors}")
    expect(done == {"event": "done", "ok": True, "layers": 2, "smoke": smoke}, f"done {done}")
    expect([(l["index"], l["name"], l["version"], l["mounted"], l["visible"], l.get("probe")) for l in layers] == [
        (0, "hello", "1.0.0", True, True, "/usr/local/share/hello/README"),
        (1, "world", "2.1", True, True, "/usr/local/bin/hello"),
    ], f"layers {layers}")
elif scenario == "smoke-bare":
    expect(errors == [] and layers == [], f"no errors or layers: {errors} {layers}")
    expect(done == {"event": "done", "ok": True, "layers": 0, "smoke": True}, f"done {done}")
elif scenario == "smoke-broken":
    expect([e["stage"] for e in errors] == ["mount-layer"], f"one mount-layer error: {errors}")
    expect(done == {"event": "done", "ok": False, "layers": 2, "smoke": True}, f"done {done}")
    expect(layers[0]["mounted"] and layers[0]["visible"], f"layer 0 still fine: {layers[0]}")
    expect(layers[0].get("probe") == "/usr/local/bin/hello", f"layer 0 probe: {layers[0]}")
    expect(not layers[1]["mounted"] and not layers[1]["visible"] and layers[1].get("detail"), f"layer 1 failed: {layers[1]}")
elif scenario == "fatal":
    expect([e["stage"] for e in errors] == ["init"], f"one init error: {errors}")
    expect(done == {"event": "done", "ok": False, "layers": 2, "smoke": False}, f"done {done}")
    expect("strata-init: fatal: init: /no/such/init does not exist" in text, "fatal message shown")
    expect("reboot: Power down" in text, "powered off")
if scenario == "switch":
    for marker in ["SMOKE-RCS pid=", "comm=init", "SMOKE-ROOT overlay", "SMOKE-MOUNT /dev", "SMOKE-MOUNT /proc",
                   "SMOKE-MOUNT /sys", "SMOKE-MOUNT /run", "SMOKE-HELLO hello from 01", "SMOKE-EXT layers=2"]:
        expect(marker in text, f"busybox output has {marker!r}")
else:
    expect("SMOKE-RCS" not in text, "no switch into the root")
expect("Kernel panic" not in text, "no kernel panic")
if fail:
    print(f"FAIL {scenario} ({log}):")
    for f in fail:
        print("  -", f)
    sys.exit(1)
print(f"ok   {scenario}: {len(events)} report lines")
EOF
}

status=0
run() {
    local name=$1 initrd=$2 append=$3 timing
    log "booting $name ($ARCH, TCG)"
    timing=$(boot "$name" "$initrd" "$append") || { echo "$timing"; status=1; return; }
    echo "   $timing"
    judge "$WORK/$name.log" "$name" || { status=1; KEEP=1; trap - EXIT; echo "log kept in $WORK"; }
}
run smoke "$WORK/full.cpio" "strata.smoke=1"
run smoke-bare "$WORK/bare.cpio" "strata.smoke=1"
run smoke-broken "$WORK/broken.cpio" "strata.smoke=1"
run switch "$WORK/full.cpio" ""
run fatal "$WORK/full.cpio" "init=/no/such/init"
exit $status
