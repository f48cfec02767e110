#!/bin/sh
# Builds kite's release artifacts into dist/ (DIST_DIR), the layout install.sh downloads:
#   dist/kite-<arch>             static (musl), stripped: runs on any Linux of that arch
#   dist/sha256sum-<arch>.txt    its checksum, as `sha256sum -c` reads it
#   dist/install.sh              the installer, to pipe from the same folder
# Usage: packaging/release.sh [ARCH...]   ARCH: amd64 (default), arm64, armhf
# Needs the Rust target of each arch (rustup target add x86_64-unknown-linux-musl) and a C
# compiler for it: musl-gcc (apt-get install musl-tools) for amd64 on amd64; for other
# arches, cargo-zigbuild (as .github/workflows/release.yml uses) when it is installed.
set -eu
cd "$(dirname "$0")/.."
OUT=${DIST_DIR:-dist}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
target_of() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    armhf) echo armv7-unknown-linux-musleabihf ;;
    *) return 1 ;;
  esac
}
[ $# -gt 0 ] || set -- amd64
mkdir -p "$OUT"
host=$(uname -m)
for arch in "$@"; do
  t=$(target_of "$arch") || { echo "release.sh: no arch $arch (amd64, arm64, armhf)" >&2; exit 2; }
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    echo "release.sh: skipping $arch: Rust's $t target is missing (rustup target add $t)" >&2
    continue
  fi
  case "$arch:$host" in
    amd64:x86_64)
      command -v musl-gcc >/dev/null || { echo "release.sh: musl-gcc is missing (apt-get install musl-tools)" >&2; exit 1; }
      build="cargo build" ;;
    *)
      if cargo zigbuild --version >/dev/null 2>&1; then
        build="cargo zigbuild"
      else
        echo "release.sh: skipping $arch: cross-building needs cargo-zigbuild (cargo install cargo-zigbuild; pip install ziglang)" >&2
        continue
      fi ;;
  esac
  echo "release.sh: building kite-$arch ($t, profile dist)"
  $build --locked --profile dist --target "$t" -p kite
  install -m 0755 "$TARGET_DIR/$t/dist/kite" "$OUT/kite-$arch"
  (cd "$OUT" && sha256sum "kite-$arch" >"sha256sum-$arch.txt")
  echo "release.sh: $OUT/kite-$arch $(stat -c %s "$OUT/kite-$arch" | awk '{printf "%.2f", $1 / 1048576}') MiB, sha256 $(cut -d' ' -f1 "$OUT/sha256sum-$arch.txt")"
done
install -m 0755 install.sh "$OUT/install.sh"
