#!/bin/bash
# Installs what building and testing strata needs on Debian 12, as root.
# Idempotent and quick when everything is there: it only calls apt when a
# package is missing.
set -euo pipefail

# Build: musl toolchains for the guest init. Boot tests: QEMU, UEFI firmware,
# systemd-boot. Judges used by tests: sgdisk, fsck.vfat, unsquashfs, mtools,
# cpio, xz, zstd, depmod/modinfo (kmod), qemu-img, xorriso, mkfs.erofs,
# skopeo, openssl (TLS registry test), python3 (OVF XML check), e2fsck
# (e2fsprogs: the init's ext2 mkfs), xmllint (libxml2-utils: the JUnit report
# against tests/junit.xsd), systemd-measure's TPM libraries (it refuses to run
# without libtss2-rc, which nothing else pulls in on a fresh machine) and
# swtpm (PCR 11 judge, TPM for boot tests); sbsigntool (sbverify), osslsigncode
# and binutils (objdump) judge signed EFI binaries and UKIs, whose stubs
# come from systemd-boot-efi. Inputs: debootstrap (the Debian root
# with systemd for the distro test). `make bench` runs the peers' pipeline
# (sfdisk from fdisk, besides the judges above) under GNU time. Under
# `make test` (STRATA_E2E=1) a test whose judge is missing fails, so every
# judge a test uses must be listed here.
packages=(
  qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64
  systemd-boot-efi systemd-boot-efi:arm64
  musl-tools gcc-aarch64-linux-gnu
  gdisk dosfstools squashfs-tools mtools cpio xz-utils zstd kmod
  qemu-utils xorriso docker-registry erofs-utils skopeo openssl python3
  e2fsprogs debootstrap fdisk time libxml2-utils
  swtpm swtpm-tools libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-tcti-swtpm0
  sbsigntool osslsigncode binutils
)

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  need_update=1
fi

missing=()
for p in "${packages[@]}"; do
  # A package installed for two architectures prints one status per line.
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx "install ok installed" || missing+=("$p")
done

if (( ${#missing[@]} )) || [[ -n ${need_update:-} ]]; then
  echo "deps: installing ${missing[*]:-(package lists only)}"
  apt-get update -q
  extra=()
  # A newer qemu-utils (from backports) breaks Debian 12's qemu-system; take bookworm's.
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    extra+=(qemu-utils/bookworm)
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "${extra[@]}" "${missing[@]}"
fi

if command -v rustup >/dev/null; then
  installed=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  done
fi
