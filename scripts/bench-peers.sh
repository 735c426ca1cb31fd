#!/bin/bash
# The peers' way of building what the benchmark's strata profile builds, as
# shell around the usual tools (what Talos' imager, Flatcar's and mkosi-like
# pipelines run): the same work on the same inputs, with the same outputs.
# It need not boot; each step does what strata's step does, so the times
# and sizes compare:
#   squashfs      mksquashfs per tree, on every core
#   initramfs     cpio (stored: the squashfs images) + cpio | xz/zstd (init,
#                 /dev/console, the module closure, modules.load)
#   ESP           mkfs.vfat + mtools (systemd-boot, loader entry, kernel, initramfs)
#   disk          sfdisk (GPT: ESP + DATA, 2 GiB as platform aws) + dd
#   qcow2, OVA    qemu-img convert (qcow2; streamOptimized VMDK) + tar
#   raw.xz/.zst   xz -T0 / zstd -19 -T0 around the raw disk
#   ISO           xorriso: El Torito UEFI boot of the ESP, hybrid GPT
# Usage: bench-peers.sh xz|zstd INPUTS_DIR KERNEL_DEB INIT BOOTLOADER OUT_DIR [squashfs]
# With `squashfs`, only the squashfs images are made: the benchmark's floor,
# with exactly the pipeline's mksquashfs settings.
set -euo pipefail
config=$1 inputs=$2 kernel_deb=$3 init=$4 bootloader=$5 out=$6 only=${7:-}
# mksquashfs takes every timestamp from it (and refuses -all-time beside it).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
epoch=$SOURCE_DATE_EPOCH
cores=$(nproc)
name=aws-amd64
work=$out/work
rm -rf "$out"
mkdir -p "$work"

# strata's initramfs module set (plan/modules.rs DEFAULT_MODULES; platform aws adds nvme, already there).
MODULES=(virtio_pci virtio_blk virtio_scsi nvme ahci sd_mod sr_mod cdrom isofs loop
  squashfs erofs overlay vfat nls_cp437 nls_ascii)
CMDLINE="console=tty1 console=ttyS0 net.ifnames=0 nvme_core.io_timeout=4294967295 strata.platform=aws"

# Compressor settings of the config: squashfs, initramfs segment, wrapper.
case $config in
  xz)
    sqfs_comp=(-comp xz)
    initramfs_compress() { xz -T0 -6 --check=crc32; }
    wrap() { xz -T0 -6 -c "$1" >"$1.xz"; }
    ;;
  zstd)
    sqfs_comp=(-comp zstd -Xcompression-level 15)
    initramfs_compress() { zstd -q -19 -T0; }
    wrap() { zstd -q -19 -T0 -c "$1" >"$1.zst"; }
    ;;
  *) echo "bench-peers: unknown config $config" >&2; exit 2 ;;
esac

# One squashfs per tree, reproducible (SOURCE_DATE_EPOCH), root-owned for the
# extensions as Talos' mksquashfs -all-root; the root keeps its owners.
squash() { # tree out [extra mksquashfs options]
  local tree=$1 img=$2; shift 2
  mksquashfs "$tree" "$img" -noappend -quiet -no-progress -processors "$cores" \
    "${sqfs_comp[@]}" -no-xattrs "$@" >/dev/null
}

squash_all() {
  # strata adds an empty /etc/extensions.yaml to a directory root (the init
  # bind-mounts the real one over it): a pseudo file does the same here.
  squash "$inputs/debian-root" "$work/rootfs.sqsh" -p "etc/extensions.yaml f 444 0 0 true"
  local i=0 ext n
  echo "layers:" >"$work/extensions.yaml"
  for ext in "$inputs"/ext/*/; do
    n=$(basename "$ext")
    squash "$ext/rootfs" "$work/$(printf %02d $i)-$n.sqsh" -all-root
    printf '  - image: %02d-%s.sqsh\n    metadata:\n      name: %s\n      version: 1.0.0\n' $i "$n" "$n" >>"$work/extensions.yaml"
    i=$((i + 1))
  done
}

# The kernel from its .deb, and the module closure as initramfs-tools finds
# it: depmod over the unpacked tree (Debian ships no modules.dep), then
# modprobe --show-depends, dependencies first.
kernel_and_modules() {
  dpkg-deb -x "$kernel_deb" "$work/kernel"
  release=$(ls "$work/kernel/lib/modules")
  depmod -b "$work/kernel" "$release"
  mkdir -p "$work/boot/lib/modules/$release" "$work/boot/etc/strata" "$work/boot/dev"
  local m ko rel
  for m in "${MODULES[@]}"; do
    modprobe -d "$work/kernel" -S "$release" --show-depends "$m"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
    rel=${ko#"$work/kernel/"}
    mkdir -p "$work/boot/$(dirname "$rel")"
    cp "$ko" "$work/boot/$rel"
    echo "/$rel" >>"$work/boot/etc/strata/modules.load"
  done
}

# Two concatenated newc segments, as strata's: the squashfs images stored
# (compressing them again would be waste), then the boot part compressed.
initramfs() {
  cp "$init" "$work/boot/init"
  mknod -m 600 "$work/boot/dev/console" c 5 1
  mkdir -p "$work/boot/"{proc,sys,run,tmp}
  (cd "$work" && ls rootfs.sqsh [0-9]*-*.sqsh extensions.yaml |
    cpio -o -H newc --quiet --reproducible) >"$work/initrd.img"
  (cd "$work/boot" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc --quiet --reproducible) | initramfs_compress >>"$work/initrd.img"
}

# FAT32 ESP sized as strata's `auto`: contents (at least FAT32's minimum,
# 33 MiB) + a quarter (at least 8 MiB), in whole MiB.
esp() {
  local entry=$work/strata-bench.conf need mib
  printf 'timeout 0\ndefault strata-bench.conf\neditor no\n' >"$work/loader.conf"
  printf 'title bench\nversion %s\nlinux /strata/vmlinuz\ninitrd /strata/initrd.img\noptions %s\n' \
    "$release" "$CMDLINE" >"$entry"
  need=$(du -cb "$bootloader" "$work/kernel/boot/vmlinuz-$release" "$work/initrd.img" | tail -n1 | cut -f1)
  ((need >= 33 << 20)) || need=$((33 << 20))
  mib=$(((need + (need / 4 > 8 << 20 ? need / 4 : 8 << 20) + (1 << 20) - 1) >> 20))
  esp_mib=$mib
  mkfs.vfat -F 32 -n ESP -i 12345678 -C "$work/esp.img" $((mib * 1024)) >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$work/esp.img" ::EFI ::EFI/BOOT ::loader ::loader/entries ::strata
  mcopy -i "$work/esp.img" "$bootloader" ::EFI/BOOT/BOOTX64.EFI
  mcopy -i "$work/esp.img" "$work/loader.conf" ::loader/loader.conf
  mcopy -i "$work/esp.img" "$entry" ::loader/entries/strata-bench.conf
  mcopy -i "$work/esp.img" "$work/kernel/boot/vmlinuz-$release" ::strata/vmlinuz
  mcopy -i "$work/esp.img" "$work/initrd.img" ::strata/initrd.img
}

# The 2 GiB GPT disk of platform aws: ESP at 1 MiB, DATA (empty) after it.
disk() {
  local raw=$out/$name.raw
  truncate -s 2G "$raw"
  sfdisk --quiet "$raw" <<EOF
label: gpt
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=EFI
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=DATA
EOF
  dd if="$work/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
}

# The OVA: a streamOptimized VMDK, an OVF descriptor and a manifest, in a tar.
ova() {
  local d=$work/ova
  mkdir -p "$d"
  qemu-img convert -O vmdk -o subformat=streamOptimized "$out/$name.raw" "$d/$name-disk1.vmdk"
  cat >"$d/$name.ovf" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="$name-disk1.vmdk" ovf:id="file1"/></References>
  <DiskSection><Disk ovf:capacity="2147483648" ovf:diskId="vmdisk1" ovf:fileRef="file1"
    ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
  <VirtualSystem ovf:id="$name"><Name>$name</Name></VirtualSystem>
</Envelope>
EOF
  (cd "$d" && sha256sum --tag "$name.ovf" "$name-disk1.vmdk" >"$name.mf")
  tar -C "$d" --mtime=@"$epoch" --owner=0 --group=0 -cf "$out/$name.ova" \
    "$name.ovf" "$name.mf" "$name-disk1.vmdk"
}

# The hybrid ISO: the ESP image, stored once, as El Torito UEFI boot image
# and as the EFI partition of a GPT (-efi-boot-part --efi-boot-image).
iso() {
  mkdir -p "$work/iso"
  ln -f "$work/esp.img" "$work/iso/ESP.IMG"
  xorriso -as mkisofs -quiet -o "$out/$name.iso" -V STRATA \
    -e ESP.IMG -no-emul-boot -efi-boot-part --efi-boot-image "$work/iso"
}

main() {
  squash_all
  if [[ $only == squashfs ]]; then
    rm -rf "$out"
    return
  fi
  kernel_and_modules
  initramfs
  esp
  disk
  qemu-img convert -O qcow2 "$out/$name.raw" "$out/$name.qcow2"
  ova
  wrap "$out/$name.raw"
  iso
  rm -rf "$work"
}

# One line: bash has read the whole file before it runs (see bench.sh).
main; exit
