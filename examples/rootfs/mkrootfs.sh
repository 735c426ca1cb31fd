#!/bin/sh
# Builds the demo root filesystem from Debian's busybox-static package:
# a static busybox, its applet links, an inittab and an os-release.
# Usage: mkrootfs.sh BUSYBOX_DEB DEST_DIR
# Nothing of the target runs at build time, so it works for any arch.
set -eu
deb=$1
dest=$2
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "${dest}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/pkg"
root=$tmp/root
mkdir -p "$root/bin" "$root/sbin" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/run" \
         "$root/tmp" "$root/root" "$root/usr/bin" "$root/usr/sbin" "$root/usr/local"
cp "$tmp/pkg/bin/busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for a in sh ash cat echo ls mount umount mkdir rm cp mv ln ps dmesg uname sleep grep sed head tail \
         wc sync stat find poweroff reboot halt free df du env printf test true false vi more less; do
  ln -s busybox "$root/bin/$a"
done
ln -s ../bin/busybox "$root/sbin/init"
cat > "$root/etc/inittab" <<'INITTAB'
::sysinit:/bin/sh -c 'echo "strata: switched into the merged root"; cat /usr/local/share/motd/motd.txt 2>/dev/null'
::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
INITTAB
cat > "$root/etc/os-release" <<'OSREL'
NAME="strata demo"
ID=strata
VERSION_ID=1.0.0
PRETTY_NAME="strata demo 1.0.0"
OSREL
: > "$root/etc/extensions.yaml"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
chmod 1777 "$root/tmp"
rm -rf "$dest"
mv "$root" "$dest"
