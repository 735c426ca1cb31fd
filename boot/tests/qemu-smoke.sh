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
#   sysext       strata.smoke=1, two layers + sysext tools.raw (squashfs,
#                ID=_any, shadows a layer's file, ships /opt the root lacks)
#                + sysext zeta_1.0.raw (erofs, ID_LIKE/VERSION_ID match,
#                release file found by base name, ships the kernel modules
#                macvtap/macvlan/tap/dummy + their depmod index + firmware)
#                + confext cfg.raw: all merged and visible, firmware path
#                set, macvtap and rtnl-link-dummy (an alias) loaded by name
#   sysext-bad   strata.smoke=1, as sysext plus wrong.raw (ID=fedora),
#                confext junk.raw (no file system) and a missing module
#                name: each reported with its reason, ok=false
#   flat         strata.smoke=1, two layers + extensions.json: a flattened
#                extension whose probe has the right sha256, a disabled one
#                whose image file is in the root; a virtio-blk and an NVMe
#                disk attached: each reported with its drivers
#   flat-bad     strata.smoke=1, the sysext initramfs + an extensions.json
#                with a wrong probe sha256, a disabled sysext that is merged
#                anyway and a disabled image that is missing: ok=false
#   switch       no smoke: switch_root into busybox init, whose rcS proves
#                the merged root, the moved API mounts and the top layer
#   sysext-switch  no smoke, the sysext initramfs: rcS sees the sysext and
#                confext files, the /usr overlay and the loaded module
#   fatal        no smoke, init=/no/such/init: init error, ok=false, the
#                fatal message, a power-off after 5 s and no kernel panic
#
# Usage: boot/tests/qemu-smoke.sh            (ARCH=x86_64 by default)
#        ARCH=aarch64 boot/tests/qemu-smoke.sh
#        KEEP=1 ... keeps the work directory; WORK=dir picks it.
# Needs: cargo + the musl target, dpkg-deb, mksquashfs, mkfs.erofs
# (erofs-utils), modinfo and depmod (kmod), python3, qemu-system-$ARCH, and
# the Debian .debs in .cache/debian/.
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
    SD_ARCH=x86-64
    QEMU=(qemu-system-x86_64 -accel tcg -m 1024)
    CONSOLE=ttyS0
    ;;
aarch64)
    DEB_ARCH=arm64
    SD_ARCH=arm64
    QEMU=(qemu-system-aarch64 -M virt -cpu cortex-a57 -accel tcg -m 1024)
    CONSOLE=ttyAMA0
    ;;
*)
    echo "unsupported ARCH=$ARCH (x86_64 or aarch64)" >&2
    exit 2
    ;;
esac

DEPMOD=$(command -v depmod || echo /usr/sbin/depmod)
for tool in cargo dpkg-deb mksquashfs mkfs.erofs modinfo "$DEPMOD" python3 "${QEMU[0]}"; do
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
# crc32c_generic first: libcrc32c (erofs' dependency) asks the crypto API
# for crc32c, and there is no modprobe in the initramfs to load it on demand.
for m in loop squashfs overlay crc32c_generic erofs virtio_pci virtio_blk nvme; do add_module "$m"; done

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
printf 'NAME=strata-test\nID=strata\nID_LIKE=debian\nVERSION_ID=12\n' >"$ROOT/etc/os-release"
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
[ -e /usr/share/tools/hello.txt ] && echo "SMOKE-SYSEXT $(cat /usr/share/tools/hello.txt)"
grep -q '^sysext /usr overlay ' /proc/mounts && echo "SMOKE-USR sysext overlay"
[ -e /etc/cfg/app.conf ] && echo "SMOKE-CONFEXT $(cat /etc/cfg/app.conf)"
[ -d /sys/module/macvtap ] && echo "SMOKE-EXTMOD macvtap"
poweroff -f
EOF
chmod 755 "$ROOT/etc/init.d/rcS"
# Flattened into the root at build time (the probe), and shipped disabled.
mkdir -p "$ROOT/usr/share/flat" "$ROOT/usr/lib/strata/extensions-available"
printf 'flattened into the root\n' >"$ROOT/usr/share/flat/hello.txt"
printf 'hsqs: a disabled image, never attached\n' >"$ROOT/usr/lib/strata/extensions-available/spare.raw"
FLAT_SHA=$(sha256sum "$ROOT/usr/share/flat/hello.txt" | cut -d' ' -f1)
cat >"$WORK/extensions.json" <<JSON
{"flattened":[{"name":"flat","version":"3.0","kind":"talos","probe":{"path":"/usr/share/flat/hello.txt","sha256":"$FLAT_SHA"}}],
 "disabled":[{"name":"spare","version":"2.0","kind":"sysext","path":"/usr/lib/strata/extensions-available/spare.raw"}]}
JSON
ZERO_SHA=$(printf '0%.0s' $(seq 64))
cat >"$WORK/extensions-bad.json" <<JSON
{"flattened":[{"name":"flat","version":"3.0","kind":"talos","probe":{"path":"/usr/share/flat/hello.txt","sha256":"$ZERO_SHA"}}],
 "disabled":[{"name":"tools","version":"","kind":"sysext","path":"/usr/lib/strata/extensions-available/spare.raw"},
             {"name":"gone","kind":"confext","path":"/usr/lib/strata/extensions-available/gone.raw"}]}
JSON

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

# --- sysext and confext images ---------------------------------------------
log "making sysext/confext images"
# release FILE LINES...: an extension-release file.
release() {
    local file=$1
    shift
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$@" >"$file"
}
SX_TOOLS=$WORK/sx-tools
release "$SX_TOOLS/usr/lib/extension-release.d/extension-release.tools" "ID=_any"
mkdir -p "$SX_TOOLS/usr/share/tools" "$SX_TOOLS/usr/local/bin" "$SX_TOOLS/opt/tools"
printf 'hello from the tools sysext\n' >"$SX_TOOLS/usr/share/tools/hello.txt"
printf '#!/bin/sh\necho hello from tools\n' >"$SX_TOOLS/usr/local/bin/hello"
chmod 755 "$SX_TOOLS/usr/local/bin/hello"
printf 'the root has no /opt\n' >"$SX_TOOLS/opt/tools/README"
mksquashfs "$SX_TOOLS" "$WORK/tools.raw" -comp zstd "${SQ[@]}"

# zeta_1.0: found as extension-release.zeta (the name cut at "_"); ships
# kernel modules the initramfs does not have, indexed by the host's depmod.
SX_ZETA=$WORK/sx-zeta
release "$SX_ZETA/usr/lib/extension-release.d/extension-release.zeta" \
    "ID=debian" "VERSION_ID='12'" 'SYSEXT_VERSION_ID="1.0"' "ARCHITECTURE=$SD_ARCH"
ZMOD=$SX_ZETA/usr/lib/modules/$RELEASE
for m in macvtap macvlan tap dummy; do
    file=$(find "$WORK/kernel$MODDIR" -name "$m.ko" | head -n1)
    [[ -n $file ]] || { echo "module $m not found in $KDEB" >&2; exit 1; }
    mkdir -p "$ZMOD/$(dirname "${file#"$WORK/kernel$MODDIR/"}")"
    cp "$file" "$ZMOD/${file#"$WORK/kernel$MODDIR/"}"
done
cp "$WORK/kernel$MODDIR"/modules.{builtin,builtin.modinfo,order} "$ZMOD/"
"$DEPMOD" -b "$SX_ZETA/usr" "$RELEASE"
grep -q '^kernel/drivers/net/macvtap.ko:' "$ZMOD/modules.dep" || { echo "depmod wrote no macvtap entry" >&2; exit 1; }
mkdir -p "$SX_ZETA/usr/lib/firmware/strata"
printf 'firmware blob\n' >"$SX_ZETA/usr/lib/firmware/strata/test.bin"
mkfs.erofs -zlz4hc --all-root -T0 -U 00000000-0000-0000-0000-000000000000 --quiet "$WORK/zeta.raw" "$SX_ZETA"

CX_CFG=$WORK/cx-cfg
release "$CX_CFG/etc/extension-release.d/extension-release.cfg" "ID=_any"
mkdir -p "$CX_CFG/etc/cfg"
printf 'setting=from-confext\n' >"$CX_CFG/etc/cfg/app.conf"
mksquashfs "$CX_CFG" "$WORK/cfg.raw" -comp xz "${SQ[@]}"

SX_WRONG=$WORK/sx-wrong
release "$SX_WRONG/usr/lib/extension-release.d/extension-release.wrong" "ID=fedora" "VERSION_ID=39"
mkdir -p "$SX_WRONG/usr/share/wrong"
printf 'never merged\n' >"$SX_WRONG/usr/share/wrong/file"
mksquashfs "$SX_WRONG" "$WORK/wrong.raw" -comp zstd "${SQ[@]}"
printf '%s\n' "# loaded by name from the merged root" macvtap rtnl-link-dummy >"$WORK/modules.check"
printf '%s\n' macvtap no_such_module >"$WORK/modules-bad.check"

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
TALOS=("rootfs.sqsh=$WORK/rootfs.sqsh" "00-hello.sqsh=$WORK/00-hello.sqsh"
    "01-world.sqsh=$WORK/01-world.sqsh" "extensions.yaml=$WORK/extensions.yaml")
mkinitrd "$WORK/sysext.cpio" "${TALOS[@]}" "sysext/tools.raw=$WORK/tools.raw" \
    "sysext/zeta_1.0.raw=$WORK/zeta.raw" "confext/cfg.raw=$WORK/cfg.raw" \
    "etc/strata/modules.check=$WORK/modules.check"
mkinitrd "$WORK/flat.cpio" "${TALOS[@]}" "etc/strata/extensions.json=$WORK/extensions.json"
mkinitrd "$WORK/flat-bad.cpio" "${TALOS[@]}" "sysext/tools.raw=$WORK/tools.raw" \
    "sysext/zeta_1.0.raw=$WORK/zeta.raw" "confext/cfg.raw=$WORK/cfg.raw" \
    "etc/strata/modules.check=$WORK/modules.check" "etc/strata/extensions.json=$WORK/extensions-bad.json"
# Two small disks for the flat run: one on virtio-blk, one on NVMe.
truncate -s 8M "$WORK/disk-vd.raw"
truncate -s 16M "$WORK/disk-nvme.raw"
DISKS=(-drive "file=$WORK/disk-vd.raw,if=none,id=vd,format=raw" -device virtio-blk-pci,drive=vd
    -drive "file=$WORK/disk-nvme.raw,if=none,id=nv,format=raw" -device nvme,serial=strata0,drive=nv)
mkinitrd "$WORK/sysext-bad.cpio" "${TALOS[@]}" "sysext/tools.raw=$WORK/tools.raw" \
    "sysext/wrong.raw=$WORK/wrong.raw" "sysext/zeta_1.0.raw=$WORK/zeta.raw" \
    "confext/junk.raw=$WORK/garbage.sqsh" "etc/strata/modules.check=$WORK/modules-bad.check"

# --- boot and judge --------------------------------------------------------
# boot NAME INITRD APPEND [QEMU ARGS...]: runs QEMU until it powers off (or
# TIMEOUT), saves the serial log to $WORK/NAME.log and prints the seconds to
# the done line.
boot() {
    local name=$1 initrd=$2 append=$3
    shift 3
    python3 - "$WORK/$name.log" "$TIMEOUT" "${QEMU[@]}" "$@" -nographic -no-reboot \
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
firmware = [e for e in events if e["event"] == "firmware"]
extmods = [e for e in events if e["event"] == "ext_module"]
disks = [e for e in events if e["event"] == "disk"]
done = events[-1] if events else {}
smoke = scenario not in ("switch", "fatal", "sysext-switch")
with_sysext = scenario in ("sysext", "sysext-bad", "sysext-switch", "flat-bad")
# Every run that gets a root reports the firmware directory once, after the layers.
expect(len(firmware) == 1, f"one firmware event: {firmware}")
if with_sysext:
    expect(firmware[:1] == [{"event": "firmware", "path": "/strata/root/usr/lib/firmware", "set": True}], f"firmware {firmware}")
else:
    expect(len(firmware) == 1 and firmware[0]["path"] == "" and not firmware[0]["set"], f"no firmware dir {firmware}")
    expect(extmods == [], f"no ext modules {extmods}")
order = [k for k in kinds if k not in ("error",)]
tail = ["firmware"] + ["ext_module"] * len(extmods) + ["disk"] * len(disks) + ["done"]
expect(order[-len(tail):] == tail, f"firmware, ext_module*, disk*, done at the end: {kinds}")
# Only the flat run has disks attached; the others wait and report none.
if scenario == "flat":
    expect(disks == [
        {"event": "disk", "name": "nvme0n1", "drivers": ["nvme"], "size_bytes": 16 << 20, "removable": False},
        {"event": "disk", "name": "vda", "drivers": ["virtio_blk", "virtio-pci"], "size_bytes": 8 << 20, "removable": False},
    ], f"disks {disks}")
else:
    expect(disks == [], f"no disks {disks}")
def row(l):
    return (l["index"], l["kind"], l["image"], l["name"], l["version"], l["mounted"], l["visible"], l.get("probe"))
REL = "/usr/lib/extension-release.d/extension-release."
TALOS_UNDER_TOOLS = [
    (0, "talos", "00-hello.sqsh", "hello", "1.0.0", True, True, "/usr/local/share/hello/README"),
    # tools.raw ships /usr/local/bin/hello over layer 1's: the probe moves on.
    (1, "talos", "01-world.sqsh", "world", "2.1", True, True, "/usr/local/share/world/data"),
]
TOOLS = (2, "sysext", "tools.raw", "tools", "", True, True, REL + "tools")
def mod(e):
    return (e["name"], e["loaded"], (e.get("path") or "").split("/kernel/")[-1], e.get("deps", []))
def shipped(l):
    return (l["index"], l["kind"], l["image"], l["name"], l["version"], l["mounted"], l["visible"],
            l.get("probe"), l.get("flattened", False), l.get("disabled", False))
FLAT_PROBE = "/usr/share/flat/hello.txt"
SPARE = "/usr/lib/strata/extensions-available/spare.raw"
if scenario == "flat":
    expect(errors == [], f"no errors: {errors}")
    expect(done == {"event": "done", "ok": True, "layers": 4, "smoke": True}, f"done {done}")
    expect([shipped(l) for l in layers] == [
        (0, "talos", "00-hello.sqsh", "hello", "1.0.0", True, True, "/usr/local/share/hello/README", False, False),
        (1, "talos", "01-world.sqsh", "world", "2.1", True, True, "/usr/local/bin/hello", False, False),
        (2, "talos", "", "flat", "3.0", False, True, FLAT_PROBE, True, False),
        (3, "sysext", "spare.raw", "spare", "2.0", False, True, SPARE, False, True),
    ], f"layers {layers}")
    expect(all("detail" not in l for l in layers), f"no details: {layers}")
elif scenario == "flat-bad":
    expect(errors == [], f"no error events (failed checks only): {errors}")
    expect(done == {"event": "done", "ok": False, "layers": 8, "smoke": True}, f"done {done}")
    expect([shipped(l) for l in layers[5:]] == [
        (5, "talos", "", "flat", "3.0", False, False, FLAT_PROBE, True, False),
        (6, "sysext", "spare.raw", "tools", "", True, True, SPARE, False, True),
        (7, "confext", "gone.raw", "gone", "", False, False, "/usr/lib/strata/extensions-available/gone.raw", False, True),
    ], f"shipped layers {layers[5:]}")
    details = [l.get("detail", "") for l in layers[5:]]
    expect(len(details) == 3 and details[0].startswith(f"sha256 of {FLAT_PROBE} is ") and details[0].endswith(", expected " + "0" * 64), f"flat detail {details[:1]}")
    expect(len(details) == 3 and details[1] == 'a sysext layer named "tools" is mounted in this boot', f"tools detail {details[1:2]}")
    expect(len(details) == 3 and details[2] == "/usr/lib/strata/extensions-available/gone.raw is missing from the merged root", f"gone detail {details[2:]}")
    expect(all(l["mounted"] and l["visible"] for l in layers[:5]), f"the other layers are fine: {layers[:5]}")
elif scenario in ("sysext", "sysext-switch"):
    expect(errors == [], f"no errors: {errors}")
    expect(done == {"event": "done", "ok": True, "layers": 5, "smoke": smoke}, f"done {done}")
    expect([row(l) for l in layers] == TALOS_UNDER_TOOLS + [
        TOOLS,
        (3, "sysext", "zeta_1.0.raw", "zeta_1.0", "1.0", True, True, REL + "zeta"),
        (4, "confext", "cfg.raw", "cfg", "", True, True, "/etc/cfg/app.conf"),
    ], f"layers {layers}")
    expect("/opt not merged" in (layers[2].get("detail") or ""), f"tools notes /opt: {layers[2]}")
    expect([mod(e) for e in extmods] == [
        ("macvtap", True, "drivers/net/macvtap.ko", ["tap", "macvlan"]),
        ("rtnl-link-dummy", True, "drivers/net/dummy.ko", []),
    ], f"ext modules {extmods}")
    expect(all(e.get("path", "").startswith("/usr/lib/modules/") for e in extmods), f"module paths {extmods}")
elif scenario == "sysext-bad":
    stages = [e["stage"] for e in errors]
    expect(stages == ["sysext", "confext", "ext-modules"], f"errors {errors}")
    expect(errors and errors[0]["message"].startswith('wrong.raw: ID="fedora" matches neither the root\'s ID="strata" nor its ID_LIKE="debian"'), f"wrong.raw rule: {errors[:1]}")
    expect(len(errors) > 1 and "junk.raw is neither a squashfs" in errors[1]["message"], f"junk.raw: {errors[1:2]}")
    expect(len(errors) > 2 and "no_such_module" in errors[2]["message"], f"ext-modules: {errors[2:]}")
    expect(done == {"event": "done", "ok": False, "layers": 6, "smoke": True}, f"done {done}")
    expect([row(l) for l in layers] == TALOS_UNDER_TOOLS + [
        TOOLS,
        (3, "sysext", "wrong.raw", "wrong", "", False, False, None),
        (4, "sysext", "zeta_1.0.raw", "zeta_1.0", "1.0", True, True, REL + "zeta"),
        (5, "confext", "junk.raw", "junk", "", False, False, None),
    ], f"layers {layers}")
    expect(len(layers) > 3 and "matches neither the root's ID" in layers[3].get("detail", ""), f"wrong detail {layers[3:4]}")
    expect([mod(e) for e in extmods] == [
        ("macvtap", True, "drivers/net/macvtap.ko", ["tap", "macvlan"]),
        ("no_such_module", False, "", []),
    ], f"ext modules {extmods}")
    expect(len(extmods) > 1 and "is not in /strata/root/usr/lib/modules/" in extmods[1].get("error", ""), f"missing module error {extmods[1:]}")
elif scenario in ("smoke", "switch"):
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
if scenario in ("switch", "sysext-switch"):
    for marker in ["SMOKE-RCS pid=", "comm=init", "SMOKE-ROOT overlay", "SMOKE-MOUNT /dev", "SMOKE-MOUNT /proc",
                   "SMOKE-MOUNT /sys", "SMOKE-MOUNT /run", "SMOKE-EXT layers=2"]:
        expect(marker in text, f"busybox output has {marker!r}")
    sysext_markers = ["SMOKE-HELLO hello from tools", "SMOKE-SYSEXT hello from the tools sysext",
                      "SMOKE-USR sysext overlay", "SMOKE-CONFEXT setting=from-confext", "SMOKE-EXTMOD macvtap"]
    if scenario == "switch":
        expect("SMOKE-HELLO hello from 01" in text, "busybox output has 'SMOKE-HELLO hello from 01'")
        expect(not any(m.split()[0] + " " in text for m in sysext_markers[1:]), "no sysext markers without sysext")
    else:
        for marker in sysext_markers:
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
    shift 3
    log "booting $name ($ARCH, TCG)"
    timing=$(boot "$name" "$initrd" "$append" "$@") || { echo "$timing"; status=1; return; }
    echo "   $timing"
    judge "$WORK/$name.log" "$name" || { status=1; KEEP=1; trap - EXIT; echo "log kept in $WORK"; }
}
run smoke "$WORK/full.cpio" "strata.smoke=1"
run smoke-bare "$WORK/bare.cpio" "strata.smoke=1"
run smoke-broken "$WORK/broken.cpio" "strata.smoke=1"
run sysext "$WORK/sysext.cpio" "strata.smoke=1"
run sysext-bad "$WORK/sysext-bad.cpio" "strata.smoke=1"
run flat "$WORK/flat.cpio" "strata.smoke=1" "${DISKS[@]}"
run flat-bad "$WORK/flat-bad.cpio" "strata.smoke=1"
run switch "$WORK/full.cpio" ""
run sysext-switch "$WORK/sysext.cpio" ""
run fatal "$WORK/full.cpio" "init=/no/such/init"
exit $status
