# strata — everything a fresh Debian 12 machine needs, from two commands:
#   make demo   set up, build profiles/default.yaml, boot-test it, print the verdict
#   make test   the whole test suite (lint, unit, writer judges, build + boot end to end)
SHELL := /bin/bash
.DEFAULT_GOAL := demo

ARCH ?= amd64
ARCHES := amd64 arm64
CARGO ?= cargo
DEBS := .cache/debian
STRATA := target/release/strata
PROFILE ?= profiles/default.yaml
export SOURCE_DATE_EPOCH ?= 1700000000

musl_amd64 := x86_64-unknown-linux-musl
musl_arm64 := aarch64-unknown-linux-musl

.PHONY: demo test boot-test boot-matrix boot-ignored boot-flaky test-inputs deps debs kernel rootfs init strata lint bench clean

## Install apt packages and Rust targets that are missing (as root).
deps:
	@scripts/deps.sh

## Kernel and busybox .debs for ARCH, cached in .cache/debian.
debs kernel: deps
	@scripts/fetch-debs.sh $(ARCH) $(DEBS)

## The demo root filesystem (busybox) for ARCH.
rootfs: build/rootfs-$(ARCH)
build/rootfs-%: examples/rootfs/mkrootfs.sh | deps
	@scripts/fetch-debs.sh $* $(DEBS) >/dev/null
	@mkdir -p build
	examples/rootfs/mkrootfs.sh $(DEBS)/busybox-static-$*.deb $@

## A Debian 12 root with systemd (debootstrap from Debian's mirror, as root;
## about 3 minutes, then cached): the distro end-to-end test boots it.
build/debian-root-%: examples/rootfs/mkdebian.sh | deps
	@mkdir -p build
	examples/rootfs/mkdebian.sh $* $@

## A Talos extension shipping a kernel module from the kernel package (tests).
build/ext-dummy-%: examples/extensions/mkmodule-ext.sh | deps
	@scripts/fetch-debs.sh $* $(DEBS) >/dev/null
	examples/extensions/mkmodule-ext.sh $(DEBS)/linux-image-$*.deb $@

## The guest init, a static musl binary for ARCH.
init: deps
	$(CARGO) build -q -p strata-boot --release --target $(musl_$(ARCH))

## The strata CLI.
strata:
	$(CARGO) build -q -p strata-composer --release

demo: deps kernel rootfs init strata
	$(STRATA) build $(PROFILE) --arch $(ARCH)
	$(STRATA) boot out/default/metal-$(ARCH).raw

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -q --workspace --all-targets -- -D warnings

## Both architectures' inputs: the tests build and boot amd64 and arm64.
test-inputs: deps
	@for a in $(ARCHES); do scripts/fetch-debs.sh $$a $(DEBS) >/dev/null || exit 1; done
	@$(MAKE) -s build/rootfs-amd64 build/rootfs-arm64 build/ext-dummy-amd64 build/debian-root-amd64
	$(CARGO) build -q -p strata-boot --release --target $(musl_amd64) --target $(musl_arm64)

## Lint, unit tests and writer judges, then the end-to-end tests (build + boot).
test: test-inputs strata lint
	STRATA_E2E=1 $(CARGO) test --release --workspace

## The nightly boot tests (docs/boot-test.md): the boot matrix, then the boots make test
## leaves out (persistent state over two boots, one boot per QEMU media). Both run, and
## the target fails if either did.
boot-test: test-inputs strata
	@status=0; \
	$(MAKE) -s boot-matrix || status=1; \
	$(MAKE) -s boot-ignored || status=1; \
	exit $$status

## Every platform x output kind (tests/profiles/matrix.yaml) for each of BOOT_ARCHES, built
## into out/boot-matrix/ and booted by one `strata boot --junit` call: out/boot-matrix/junit.xml.
BOOT_ARCHES ?= $(ARCHES)
boot-matrix: test-inputs strata
	BOOT_ARCHES="$(BOOT_ARCHES)" scripts/boot-matrix.sh

## The end-to-end tests marked #[ignore] (long boots).
boot-ignored: test-inputs strata
	STRATA_E2E=1 $(CARGO) test --release -p strata-tests -p strata-qemu -- --ignored

## Flakiness benchmark (not part of test): the default image booted 20 times in a row,
## pass count and min/median/max time to the verdict.
boot-flaky: deps kernel rootfs init strata
	ARCH=$(ARCH) scripts/boot-flaky.sh

## Benchmark (not part of test): strata against the peers' tool pipeline (mksquashfs,
## cpio, mkfs.vfat, sfdisk, qemu-img, xz/zstd, xorriso) on a Debian root and five
## extensions from Debian packages, made once into .cache/bench (docs/performance.md).
bench: test-inputs strata
	scripts/bench.sh

clean:
	rm -rf out build target
