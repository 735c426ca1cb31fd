#!/bin/bash
# Makes the benchmark's composition, once, in a cache directory that reruns
# reuse (everything here is slow to fetch and never changes between runs):
#   DIR/debian-root/       a debootstrap'd Debian 12 root with systemd and
#                          common server packages (>= 200 MB)
#   DIR/ext/NAME/          Talos extension directories (manifest.yaml +
#                          rootfs/usr), each made from Debian packages
#   DIR/debs/              the extensions' .debs, as apt-get download left them
# Usage: bench-inputs.sh DIR
# Needs root (debootstrap) and Debian's apt mirror, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
mkdir -p "$dir/debs" "$dir/ext"

# Packages on top of mkdebian.sh's minimal systemd root: what a server root
# typically carries (ssh, networking tools, a Python and a Perl for
# configuration management); about 250 MB in all.
ROOT_PACKAGES=openssh-server,iproute2,curl,ca-certificates,less,procps,kmod,python3,perl

# The extensions, "name: packages". The packages' dependencies that a Debian
# root lacks are left out: the point is realistic bytes to compress, not a
# runnable service.
EXTENSIONS=(
  "containerd: containerd runc"
  "frr: frr frr-pythontools libyang2"
  "open-iscsi: open-iscsi"
  "open-vm-tools: open-vm-tools"
  "qemu: qemu-system-x86 qemu-system-data"
)

# The root; mkdebian.sh writes it atomically, so a directory that exists is whole.
make_root() {
  [[ -d $dir/debian-root ]] && return
  echo "bench: debootstrap of the Debian root into $dir/debian-root (a few minutes, once)" >&2
  EXTRA_PACKAGES=$ROOT_PACKAGES examples/rootfs/mkdebian.sh amd64 "$dir/debian-root"
}

# One .deb into DIR/debs, once (apt's sandbox user cannot write there; as fetch-debs.sh).
fetch_deb() {
  local pkg=$1
  compgen -G "$dir/debs/${pkg}_*.deb" >/dev/null && return
  (cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
}

# A Talos extension directory from packages. Debian 12 packages still ship
# /bin, /sbin and /lib: they are moved under /usr (what merged-usr makes of
# them), and what lies outside /usr (/etc, /var) is dropped, as a sysext or
# Talos layer would.
make_extension() {
  local name=$1; shift
  local dest=$dir/ext/$name tmp pkg d
  [[ -d $dest ]] && return
  tmp=$(mktemp -d "$dir/ext/.$name.XXXXXX")
  for pkg in "$@"; do
    fetch_deb "$pkg"
    dpkg-deb -x "$(ls "$dir/debs/${pkg}"_*.deb | sort -V | tail -n1)" "$tmp/rootfs"
  done
  mkdir -p "$tmp/rootfs/usr"
  for d in bin sbin lib lib64; do
    if [[ -d $tmp/rootfs/$d && ! -L $tmp/rootfs/$d ]]; then
      mkdir -p "$tmp/rootfs/usr/$d"
      cp -a "$tmp/rootfs/$d/." "$tmp/rootfs/usr/$d/"
    fi
  done
  find "$tmp/rootfs" -mindepth 1 -maxdepth 1 ! -name usr -exec rm -rf {} +
  cat >"$tmp/manifest.yaml" <<YAML
version: v1alpha1
metadata:
  name: $name
  version: "1.0.0"
  author: strata benchmark
  description: Debian packages $*
YAML
  mv "$tmp" "$dest"
}

make_root
for e in "${EXTENSIONS[@]}"; do
  # shellcheck disable=SC2086 # the package list splits on purpose
  make_extension "${e%%:*}" ${e#*:}
done
