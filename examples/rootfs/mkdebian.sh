#!/bin/sh
# Builds a Debian 12 root file system with systemd as its init, for tests and
# as an example of a distro root: debootstrap's minbase variant plus
# systemd-sysv (systemd as /sbin/init), udev (device units: the serial getty
# waits for its tty) and dbus (systemd-logind needs the
# system bus). Needs root and Debian's apt mirror.
# Usage: mkdebian.sh ARCH DEST_DIR [MIRROR]
# EXTRA_PACKAGES (comma-separated) adds packages to the root: the benchmark
# (scripts/bench.sh) uses it for a root of realistic size.
#
# Prepared the way image builders prepare a root (see docs/profile.md):
# - /etc/machine-id is empty: no machine shares the build's ID; systemd makes
#   one at boot (kept in a persistent state layer) without first-boot prompts;
# - /etc/hostname is `debian` (a profile's `files:` may override it);
# - /etc/resolv.conf, apt's package lists and downloaded .debs of the build
#   machine are removed.
set -eu
arch=$1
dest=$2
mirror=${3:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "${dest}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
include=systemd-sysv,udev,dbus${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}
debootstrap --variant=minbase --arch="$arch" --include="$include" \
  bookworm "$root" "$mirror"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo debian > "$root/etc/hostname"
rm -f "$root/etc/resolv.conf"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
rm -rf "$dest"
mv "$root" "$dest"
