#!/bin/bash
# Downloads Debian's kernel and busybox-static packages for one architecture
# into a cache directory, and links them under stable names:
#   DIR/linux-image-ARCH.deb  DIR/busybox-static-ARCH.deb
# For amd64 also QEMU, the hypervisor extension of the end-to-end tests:
#   DIR/qemu-system-x86-amd64.deb  DIR/qemu-system-data.deb (Architecture: all)
# Usage: fetch-debs.sh ARCH DIR
set -euo pipefail
arch=$1
dir=$2
mkdir -p "$dir"
cd "$dir"

resolve_kernel() {
  # linux-image-ARCH is a metapackage; the kernel is its linux-image-* dependency.
  apt-cache depends "linux-image-$arch:$arch" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ :]*\).*/\1/p' | head -n1
}

kernel=$(resolve_kernel)
if [[ -z $kernel ]]; then
  apt-get update -q
  kernel=$(resolve_kernel)
fi
[[ -n $kernel ]] || { echo "fetch-debs: cannot resolve linux-image-$arch (is arm64 added with dpkg --add-architecture?)" >&2; exit 1; }

fetch() { # package link-name [package-architecture]
  local pkg=$1 link=$2 pkg_arch=${3:-$arch} file
  file=$(ls -1 "${pkg%%:*}"_*_"$pkg_arch".deb 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z $file ]]; then
    # apt's sandbox user cannot write here; download as root without it.
    apt-get download -q -o APT::Sandbox::User=root "$pkg:$pkg_arch" >/dev/null
    file=$(ls -1 "${pkg%%:*}"_*_"$pkg_arch".deb | sort -V | tail -n1)
  fi
  ln -sfn "$file" "$link"
  echo "$dir/$link -> $file"
}

fetch "$kernel" "linux-image-$arch.deb"
fetch busybox-static "busybox-static-$arch.deb"
if [[ $arch == amd64 ]]; then
  fetch qemu-system-x86 qemu-system-x86-amd64.deb
  fetch qemu-system-data qemu-system-data.deb all
fi
