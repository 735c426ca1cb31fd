#!/bin/bash
# The nightly boot matrix (make boot-matrix, docs/boot-test.md): builds
# tests/profiles/matrix.yaml and matrix-vhd-dynamic.yaml (every platform in
# every output kind) for each architecture in BOOT_ARCHES into $BOOT_OUT/all
# and $BOOT_OUT/vhd-dynamic, then boots every artefact of both with one
# `strata boot --junit` call. Leaves $BOOT_OUT/junit.xml, $BOOT_OUT/boot.json
# and each artefact's serial log in <artefact>.boot/; exits non-zero unless
# every artefact passed.
set -euo pipefail

out=${BOOT_OUT:-out/boot-matrix}
arches=${BOOT_ARCHES:-amd64 arm64}
strata=${STRATA:-target/release/strata}
jobs=()
[[ -n ${BOOT_JOBS:-} ]] && jobs=(--jobs "$BOOT_JOBS")

# A fresh directory: artefacts and boot logs of an earlier matrix never mix in.
rm -rf "$out"
mkdir -p "$out"
for arch in $arches; do
  echo "boot-matrix: building the $arch matrix into $out"
  "$strata" build tests/profiles/matrix.yaml --arch "$arch" --out "$out/all" --quiet
  "$strata" build tests/profiles/matrix-vhd-dynamic.yaml --arch "$arch" --out "$out/vhd-dynamic" --quiet
done
# A TCG guest on a busy nightly runner can take minutes; the verdict decides, not the clock.
"$strata" boot "${jobs[@]}" --timeout "${BOOT_TIMEOUT:-600}" \
  --junit "$out/junit.xml" --json "$out/all" "$out/vhd-dynamic" > "$out/boot.json"
