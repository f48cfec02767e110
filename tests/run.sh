#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, runs the unit
# tests, builds kite, then runs the end-to-end tiers with both kubectl versions in parallel.
# Usage: ./tests/run.sh            (as root on Debian/Ubuntu, or as a user with what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
start=$SECONDS

need_pkgs=()
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v gcc >/dev/null || need_pkgs+=(gcc)
command -v openssl >/dev/null || need_pkgs+=(openssl)
# Building: containerd's gRPC API is generated with protoc.
command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler)
# The node tier (tests/e2e/kubelet.sh): containerd, runc, nftables, a static busybox for
# the offline test images, and ctr (containerd's CLI) to look inside.
command -v containerd >/dev/null || need_pkgs+=(containerd)
command -v runc >/dev/null || need_pkgs+=(runc)
command -v nft >/dev/null || need_pkgs+=(nftables)
command -v conntrack >/dev/null || need_pkgs+=(conntrack)
command -v ip >/dev/null || need_pkgs+=(iproute2)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
# The streams tier (tests/e2e/streams.sh) types into a terminal in tmux.
command -v tmux >/dev/null || need_pkgs+=(tmux)
# The CNI tier (tests/e2e/cni.sh): the reference plugins, bridge and host-local.
[ -x /usr/lib/cni/bridge ] || need_pkgs+=(containernetworking-plugins)
# The install tier checks the static (musl) binary releases ship: musl's C compiler for the
# C parts (ring, mimalloc).
command -v musl-gcc >/dev/null || need_pkgs+=(musl-tools)
# The systemd tier boots a Debian root filesystem under systemd-nspawn.
command -v systemd-nspawn >/dev/null || need_pkgs+=(systemd-container)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
# The multinode tier's wireguard-native round: wg, and wireguard-go where the kernel has no
# WireGuard.
command -v wg >/dev/null || need_pkgs+=(wireguard-tools)
[ -d /sys/module/wireguard ] || command -v wireguard-go >/dev/null || need_pkgs+=(wireguard-go)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing: ${need_pkgs[*]} (install them, e.g. apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup)" >&2; exit 1; }

KUBECTLS=()
for k in /usr/bin/kubectl /usr/lib/google-cloud-sdk/bin/kubectl.1.33; do
  [ -x "$k" ] && KUBECTLS+=("$k")
done
# kubectl v1.36 (what users install today; its informers use watch-list), where the
# conformance kit in ../shared/conformance/ has built one: every tier runs with it too.
K136=${KITE_CONFORMANCE_DIR:-/var/tmp/kite-conformance}/bin/kubectl
API_KUBECTLS=("${KUBECTLS[@]}")
if [ -x "$K136" ]; then
  API_KUBECTLS+=("$K136")
else
  echo "   (no kubectl v1.36 at $K136: the API tiers run with ${KUBECTLS[*]})"
fi
[ ${#KUBECTLS[@]} -gt 0 ] || { echo "no kubectl found at /usr/bin/kubectl or /usr/lib/google-cloud-sdk/bin/kubectl.1.33" >&2; exit 1; }

# Build output goes where cargo puts it (CARGO_TARGET_DIR, else target/ in the checkout).
TARGET=${CARGO_TARGET_DIR:-"$ROOT/target"}
mkdir -p "$TARGET"
export KITE_BIN=${KITE_BIN:-"$TARGET/debug/kite"}
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== unit tests"
# One line when they pass (a CI report may keep only the first part of the output).
cargo test --quiet >"$TARGET/unit-tests.log" 2>&1 || true
if grep -qE "FAILED|panicked|error\[" "$TARGET/unit-tests.log" || ! grep -q "^test result" "$TARGET/unit-tests.log"; then
  grep -E "FAILED|panicked|error" "$TARGET/unit-tests.log" | cut -c1-200 | head -30
  echo "unit tests failed (the whole log: $TARGET/unit-tests.log)"; exit 1
fi
unit_pass=$(grep -oE "ok\. [0-9]+ passed" "$TARGET/unit-tests.log" | awk '{s+=$2} END {print s+0}')
echo "   $unit_pass passed (at $((SECONDS - start)) s)"
echo "== building kite"
cargo build --quiet -p kite
echo "   built (at $((SECONDS - start)) s)"
# The static binary, as packaging/release.sh builds it (debug profile here, for time): the
# install tier installs it from a release folder and runs it in an empty chroot. It builds
# beside the first end-to-end tiers; the install tier, last of the node tier, waits for it.
MUSL=x86_64-unknown-linux-musl
STATIC_RC="$TARGET/static-build.rc"
rm -f "$STATIC_RC" "$TARGET/static-build.log"
if [ "$(uname -m)" = x86_64 ]; then
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
    timeout 300 rustup target add "$MUSL" >/dev/null 2>&1 || echo "   (Rust's $MUSL target cannot be installed here: the install tier skips its static-binary checks)"
  fi
  if rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
    echo "== building the static kite ($MUSL), beside the end-to-end tiers"
    { cargo build --quiet -p kite --target "$MUSL" >"$TARGET/static-build.log" 2>&1; echo $? >"$STATIC_RC"; } &
  fi
fi
# static_bin: waits (bounded) for the static build; prints its path if it succeeded.
static_bin() {
  local i
  for i in $(seq 900); do [ -f "$STATIC_RC" ] && break; sleep 1; done
  if [ "$(cat "$STATIC_RC" 2>/dev/null)" = 0 ]; then
    echo "$TARGET/$MUSL/debug/kite"
  fi
}

echo "== end-to-end tiers (in parallel; each has its own server, port and data dir)"
logs="$TARGET/e2e-logs"
rm -rf "$logs"; mkdir -p "$logs"
pids=()
names=()
# A kubectl's name in tier names and summaries (the kit's is plain `kubectl` too).
kubectl_name() { if [ "$1" = "$K136" ]; then echo kubectl.1.36; else basename "$1"; fi; }
for k in "${API_KUBECTLS[@]}"; do
  v=$(kubectl_name "$k")
  for t in tests/e2e/*.sh; do
    case "$(basename "$t")" in kubelet.sh|streams.sh|volumes.sh|resources.sh|services.sh|cni.sh|install.sh|systemd.sh|multinode.sh|machines.sh) continue ;; esac
    n="$(basename "$t" .sh)-$v"
    KUBECTL="$k" timeout 900 bash "$t" >"$logs/$n.log" 2>&1 &
    pids+=($!); names+=("$n")
  done
done
# install.sh under systemd (in a container of its own, no node): once, as root.
if [ "$(id -u)" = 0 ]; then
  KUBECTL="${KUBECTLS[-1]}" timeout 900 bash tests/e2e/systemd.sh >"$logs/systemd.log" 2>&1 &
  pids+=($!); names+=("systemd")
fi
# Agents joining a server, three nodes in network namespaces of their own (their own
# cgroup roots, containerds and data dirs: nothing shared with the host's node tier): once,
# as root, with the newest kubectl.
if [ "$(id -u)" = 0 ]; then
  KUBECTL="${API_KUBECTLS[-1]}" timeout 900 bash tests/e2e/multinode.sh >"$logs/multinode.log" 2>&1 &
  pids+=($!); names+=("multinode")
fi
# The node tier owns host-wide things (the kite0 bridge, the kite-nat table): one
# kubectl after the other, in one job.
node_tier() {
  local k r rc=0
  for k in "${API_KUBECTLS[@]}"; do
    echo "## kubelet tier with $(kubectl_name "$k")"
    KUBECTL="$k" timeout 900 bash tests/e2e/kubelet.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the kubelet tier with $(basename "$k") was killed after 900 s"; }
    echo "## streams tier with $(kubectl_name "$k")"
    KUBECTL="$k" timeout 600 bash tests/e2e/streams.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the streams tier with $(basename "$k") was killed after 600 s"; }
    echo "## volumes tier with $(kubectl_name "$k")"
    KUBECTL="$k" timeout 600 bash tests/e2e/volumes.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the volumes tier with $(basename "$k") was killed after 600 s"; }
    echo "## resources tier with $(kubectl_name "$k")"
    KUBECTL="$k" timeout 300 bash tests/e2e/resources.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the resources tier with $(basename "$k") was killed after 300 s"; }
    echo "## services tier with $(kubectl_name "$k")"
    KUBECTL="$k" timeout 300 bash tests/e2e/services.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the services tier with $(basename "$k") was killed after 300 s"; }
  done
  # CNI delegation makes a node too: after the kubelet tier, with one kubectl (what it
  # tests is the node's, not kubectl's).
  echo "## CNI tier with $(basename "${KUBECTLS[-1]}")"
  KUBECTL="${KUBECTLS[-1]}" timeout 300 bash tests/e2e/cni.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the CNI tier was killed after 300 s"; }
  # Installing (install.sh piped from a loopback release folder, uninstall): one kubectl.
  echo "## install tier with $(basename "${KUBECTLS[-1]}")"
  if [ -f "$TARGET/static-build.log" ] || [ -f "$STATIC_RC" ]; then
    KITE_STATIC_BIN=$(static_bin)
    [ -n "$KITE_STATIC_BIN" ] || { echo "FAIL - the static (musl) build failed:"; tail -5 "$TARGET/static-build.log"; }
    export KITE_STATIC_BIN
  fi
  KUBECTL="${KUBECTLS[-1]}" timeout 300 bash tests/e2e/install.sh || { r=$?; rc=1; [ $r = 124 ] && echo "FAIL - the install tier was killed after 300 s"; }
  # One last line for the report: each part's own summary.
  awk '/^## / {h = substr($0, 4); sub(/ tier with /, " (", h); h = h ")"; next}
       /^[0-9]+ passed, [0-9]+ failed/ {printf "%s%s %s", sep, h, $0; sep = "; "}
       END {print ""}' "$logs/kubelet.log"
  return $rc
}
if [ "$(id -u)" = 0 ]; then
  node_tier >"$logs/kubelet.log" 2>&1 &
  pids+=($!); names+=("kubelet")
else
  echo "   (the kubelet tier needs root; skipped)"
fi
# Passing tiers first, then each failed one with its details, then the totals: a CI report
# that keeps only the end of the output still names every failure. (No pipeline here may
# fail the script: a grep that finds nothing is not an error.)
e2e_fail=0
failed_tiers=()
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "   ${names[$i]}: $(tail -1 "$logs/${names[$i]}.log")"
  else
    e2e_fail=1
    failed_tiers+=("${names[$i]}")
  fi
done
for n in "${failed_tiers[@]}"; do
  echo "   $n: FAILED (its log: $logs/$n.log)"
  # Each failure with the first lines of what it printed (a check's output is indented under
  # its FAIL line; a tier that stopped early shows its server log's end), then the log's end.
  awk '/^FAIL |^timed out|did not end in|unbound variable|line [0-9]+:/ {print; n = 0; keep = 1; next}
       keep && /^ / && n < 12 {print "  " $0; n++; next}
       {keep = 0}' "$logs/$n.log" | cut -c1-200 | sed 's/^/      /' | head -120 || true
  { grep -vE "^ok |^FAIL |^ " "$logs/$n.log" || true; } | cut -c1-200 | sed 's/^/      | /' | tail -20 || true
done
e2e_pass=$(cat "$logs"/*.log | grep -c "^ok " || true)
e2e_failed=$(cat "$logs"/*.log | grep -c "^FAIL " || true)
echo "== done in $((SECONDS - start))s"
echo "$((unit_pass + e2e_pass)) passed, $e2e_failed failed"
[ "$e2e_fail" -eq 0 ] && [ "$e2e_failed" -eq 0 ]
