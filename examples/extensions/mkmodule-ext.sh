#!/bin/sh
# Builds a Talos extension that ships one kernel module taken from Debian's
# kernel package, a module the base initramfs leaves out (dummy).
# Usage: mkmodule-ext.sh KERNEL_DEB DEST_DIR
set -eu
deb=$1
dest=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './lib/modules/*/kernel/drivers/net/dummy.ko'
ko=$(find "$tmp/lib/modules" -name dummy.ko)
release=$(basename "$(dirname "$(dirname "$(dirname "$(dirname "$ko")")")")")
rm -rf "$dest"
mkdir -p "$dest/rootfs/usr/lib/modules/$release/kernel/drivers/net"
cp "$ko" "$dest/rootfs/usr/lib/modules/$release/kernel/drivers/net/dummy.ko"
cat > "$dest/manifest.yaml" <<MANIFEST
version: v1alpha1
metadata:
  name: dummy-module
  version: "$release"
  author: strata developers
  description: The dummy network driver, as an extension-provided kernel module.
  compatibility:
    talos:
      version: ">= 1.0.0"
MANIFEST
