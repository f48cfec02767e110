#!/usr/bin/env bash
# End-to-end: installing kite as a user does (issue 18). install.sh piped from a release
# folder served on loopback, its checksum check (a tampered download installs nothing), a
# re-run that changes nothing, kite detached with no init system (as in CI), the node
# Ready, `kite kubectl` / `kite ps` / `kite ctr`, `kite check-config`, and
# kite-<name>-uninstall.sh leaving no process, mount, interface, nftables table, cgroup
# or file behind. Everything goes to temporary places but the log and pid files, which
# are named for the test's service (kite-e2e) and removed by the uninstall.
source "$(dirname "$0")/../lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
node_tier install

NAME=e2e
BIN="$WORK/bin"
CONF="$WORK/conf"
KC="$WORK/kite.yaml"
PODLOGS="$WORK/log/pods"
API_PORT=$(free_port)
KUBELET_PORT=$(free_port)
export KUBECONFIG="$KC"
LOG=/var/log/kite-$NAME.log
PIDF=/run/kite-$NAME.pid

# The host as it was.
snapshot() {
  echo "## processes"; pgrep -a -f -- "$DATA" || true
  echo "## mounts"; awk -v d="$DATA" 'index($2, d) == 1 {print $2}' /proc/self/mounts
  echo "## links"; ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^kite' || true
  echo "## tables"; nft list tables | grep ' kite' || true
  echo "## cgroups"; find /sys/fs/cgroup -maxdepth 3 -type d -name 'kite*' 2>/dev/null || true
  echo "## files"
  ls -A "$BIN" 2>/dev/null
  for f in "$CONF" "$KC" "$PODLOGS" "$DATA/server" "$DATA/agent/run" "$LOG" "$PIDF" /etc/kite; do
    [ -e "$f" ] && echo "$f"
  done
  true
}
snapshot >"$WORK/before.txt"

# The installed kite is this tier's node: uninstall it even when a check failed.
cleanup() {
  [ -x "$BIN/kite-$NAME-uninstall.sh" ] && "$BIN/kite-$NAME-uninstall.sh" >/dev/null 2>&1
  [ -n "${HTTP_PID:-}" ] && kill "$HTTP_PID" 2>/dev/null
  node_cleanup
  rm -rf "$WORK"
}

# The static binary releases ship (tests/run.sh builds it for musl), else this build.
RELEASE_BIN=${KITE_STATIC_BIN:-$KITE_BIN}
if [ -z "${KITE_STATIC_BIN:-}" ]; then
  echo "skip - no KITE_STATIC_BIN (tests/run.sh builds one for x86_64-unknown-linux-musl): the static-binary checks do not run, and the release folder holds $KITE_BIN"
else
  # Static: it runs in an empty chroot, and resolves names from the chroot's /etc/hosts
  # without the host's NSS modules.
  CH="$WORK/chroot"
  mkdir -p "$CH/etc"
  cp "$KITE_STATIC_BIN" "$CH/kite"
  check "the release binary runs kite --version in an empty chroot" contains "$(chroot "$CH" /kite --version 2>&1)" "(kubernetes v1.36.0)"
  out=$(chroot "$CH" /kite check-config --data-dir /data --https-listen-port "$(free_port)" --kubelet-port "$(free_port)" 2>&1); rc=$?
  check "kite check-config runs there and fails, naming what is missing" equals "$rc" 1
  check "its report says containerd is not on PATH" contains "$out" "FAIL  containerd: not found on PATH"
fi

# From a checkout with no release configured, install.sh builds with cargo and installs
# what cargo made where CARGO_TARGET_DIR says (absolute, or relative to the checkout as
# cargo reads it). A cargo of the test's stands in for the real one (whose release build
# takes minutes): it notes where it ran and puts this build where cargo would.
SRC="$WORK/src"
mkdir -p "$SRC/crates/kite" "$WORK/fakebin"
: >"$SRC/crates/kite/Cargo.toml"
cp "$ROOT/install.sh" "$SRC/install.sh"
cat >"$WORK/fakebin/cargo" <<SH
#!/bin/sh
echo "\$(pwd) \$*" >>"$WORK/cargo.calls"
mkdir -p "\${CARGO_TARGET_DIR:-target}/release"
cp "$(realpath "$KITE_BIN")" "\${CARGO_TARGET_DIR:-target}/release/kite"
SH
chmod +x "$WORK/fakebin/cargo"
from_checkout() { # TARGET-DIR NAME: installs from $SRC, enabled but not started
  env -u KITE_BIN PATH="$WORK/fakebin:$PATH" CARGO_TARGET_DIR="$1" INSTALL_KITE_SKIP_DEPS=true \
    INSTALL_KITE_SKIP_START=true INSTALL_KITE_EXEC="server --debug" \
    INSTALL_KITE_BIN_DIR="$WORK/$2/bin" INSTALL_KITE_NAME="$2" INSTALL_KITE_SYSTEMD_DIR="$WORK/$2/conf" \
    timeout 60 "$SRC/install.sh" --data-dir "$WORK/$2/data" 2>&1
}
for tdir in "$WORK/cargo-target" relative-target; do
  out=$(from_checkout "$tdir" "kite-src-$(basename "$tdir")"); rc=$?
  name=kite-src-$(basename "$tdir")
  check "from a checkout with CARGO_TARGET_DIR=$tdir, install.sh builds and installs kite" \
    contains "$rc $out" "0 [INFO]  building kite from $SRC"
  check "it ran cargo build --release in the checkout" equals "$(tail -1 "$WORK/cargo.calls")" "$SRC build --release -p kite"
  check "and installed what cargo built" cmp -s "$WORK/$name/bin/kite" "$(realpath "$KITE_BIN")"
  check "INSTALL_KITE_SKIP_START: it says it did not start kite" contains "$out" "INSTALL_KITE_SKIP_START: not starting it"
  check "and nothing started" test ! -e "/run/$name.pid" -a ! -e "/var/log/$name.log"
  check "INSTALL_KITE_EXEC's command and flags come before the command line's" \
    equals "$(cat "$WORK/$name/conf/$name.exec")" "server '--debug' '--data-dir' '$WORK/$name/data' "
done
check "a relative CARGO_TARGET_DIR is the checkout's, as cargo reads it" test -x "$SRC/relative-target/release/kite"
out=$(env -u KITE_BIN PATH="$WORK/fakebin:$PATH" INSTALL_KITE_SKIP_DEPS=true INSTALL_KITE_SKIP_ENABLE=true \
  INSTALL_KITE_BIN_DIR="$WORK/skip/bin" INSTALL_KITE_NAME=kite-skip INSTALL_KITE_SYSTEMD_DIR="$WORK/skip/conf" \
  timeout 60 "$SRC/install.sh" 2>&1); rc=$?
check "INSTALL_KITE_SKIP_ENABLE: the install succeeds" equals "$rc" 0
check "and says it did not start kite" contains "$out" "INSTALL_KITE_SKIP_ENABLE: not starting kite-skip"
check "and neither enabled nor started" test -x "$WORK/skip/bin/kite" -a ! -e "$WORK/skip/conf/kite-skip.exec" -a ! -e /run/kite-skip.pid

# A release folder laid out as packaging/release.sh's dist/, served on loopback.
DIST="$WORK/dist"
mkdir -p "$DIST"
cp "$RELEASE_BIN" "$DIST/kite-amd64"
(cd "$DIST" && sha256sum kite-amd64 >sha256sum-amd64.txt)
HTTP_PORT=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$DIST" "$HTTP_PORT" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
wait_for 10 "the release folder to be served" curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/sha256sum-amd64.txt"

install_args=(--write-kubeconfig-mode 644 --data-dir "$DATA" --write-kubeconfig "$KC"
  --https-listen-port "$API_PORT" --kubelet-port "$KUBELET_PORT" --proxy-healthz-port 0
  --pod-logs-dir "$PODLOGS" --node-name kite-e2e --bind-address 127.0.0.1
  --advertise-address 127.0.0.1 --eviction-hard 'nodefs.available<1%,imagefs.available<1%')
# As a user would: the script on stdin, its flags after `-s -`, no KITE_* of the test's.
run_install() { # [VAR=value...] -- reads install.sh from stdin
  env -u KITE_BIN -u KITE_POD_LOGS_DIR -u KITE_KUBELET_PORT -u KITE_PROXY_HEALTHZ_PORT \
    -u KITE_EVICTION_HARD INSTALL_KITE_BIN_DIR="$BIN" INSTALL_KITE_NAME="$NAME" \
    INSTALL_KITE_SYSTEMD_DIR="$CONF" "$@" timeout 120 sh -s - "${install_args[@]}"
}

out=$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT" <"$ROOT/install.sh" 2>&1); rc=$?
echo "$out" | sed 's/^/    | /'
check "piped install.sh from a release folder succeeds" equals "$rc" 0
check "it verified the download's checksum" contains "$out" "checksum verified"
check "it found containerd, runc, nftables and conntrack (or installed them)" contains "$out" "containerd, runc, nftables and conntrack"
check "with no init system it starts kite detached, saying where the log is" contains "$out" "started kite server detached"
check "it waited for the node and printed the next steps" contains "$out" "kubectl get nodes"
check "the installed binary is the release's" equals "$(sha256sum <"$BIN/kite")" "$(sha256sum <"$DIST/kite-amd64")"
check "kite-killall.sh and kite-$NAME-uninstall.sh are installed" test -x "$BIN/kite-killall.sh" -a -x "$BIN/kite-$NAME-uninstall.sh"
check "the env file is there, private" equals "$(stat -c %a "$CONF/kite-$NAME.service.env")" 600
check "the node is Ready" node_ready
check "--write-kubeconfig-mode 644 reached kite" equals "$(stat -c %a "$KC")" 644
check "kite's log has no terminal colour codes" bash -c "! grep -q $'\x1b\\[' '$LOG'"
check "kite's log says in plain words that it is ready" grep -q "kite is ready" "$LOG"
pid=$(cat "$PIDF")

out=$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT" <"$ROOT/install.sh" 2>&1); rc=$?
check "a second run succeeds" equals "$rc" 0
check "a second run changes nothing" contains "$out" "is already this version"
check "a second run does not restart kite" equals "$(cat "$PIDF")" "$pid"

# Changed arguments restart kite with them.
install_args+=(--debug)
out=$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT" <"$ROOT/install.sh" 2>&1); rc=$?
check "a re-run with other arguments succeeds" equals "$rc" 0
newpid=$(cat "$PIDF")
check "and restarts kite with them" bash -c "[ $newpid != $pid ] && grep -qa -- --debug /proc/$newpid/cmdline"
check "the node is Ready again" node_ready
pid=$(cat "$PIDF")

# A download that does not match its checksum installs nothing.
printf 'tampered' >>"$DIST/kite-amd64"
out=$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT" <"$ROOT/install.sh" 2>&1); rc=$?
check "a tampered download fails" test "$rc" -ne 0
check "and says so in one clear line" contains "$out" "does not match sha256sum-amd64.txt"
check "and installs nothing" equals "$(sha256sum <"$BIN/kite")" "$(sha256sum <"$RELEASE_BIN")"
check "and leaves kite running" equals "$(cat "$PIDF")" "$pid"
check "a missing release folder fails clearly" contains \
  "$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT/v9.9.9" <"$ROOT/install.sh" 2>&1)" "download of http://127.0.0.1:$HTTP_PORT/v9.9.9/sha256sum-amd64.txt failed"

# A new release upgrades in place and restarts kite (when the static build is the release,
# this build is the "new" one).
if [ "$RELEASE_BIN" != "$KITE_BIN" ]; then
  cp "$KITE_BIN" "$DIST/kite-amd64"
  (cd "$DIST" && sha256sum kite-amd64 >sha256sum-amd64.txt)
  out=$(run_install INSTALL_KITE_RELEASE_URL="http://127.0.0.1:$HTTP_PORT" <"$ROOT/install.sh" 2>&1); rc=$?
  check "a new release installs over the old one" contains "$rc $out" "[INFO]  installed $BIN/kite"
  check "and the installer succeeds" equals "$rc" 0
  check "and restarts kite" bash -c "[ \"\$(cat $PIDF)\" != $pid ]"
  check "the upgraded node is Ready when the installer returns" node_ready
  pid=$(cat "$PIDF")
fi

# From a checkout with the binary present: nothing to build, nothing changes.
out=$(env -u KITE_BIN INSTALL_KITE_SKIP_DOWNLOAD=true INSTALL_KITE_BIN_DIR="$BIN" INSTALL_KITE_NAME="$NAME" \
  INSTALL_KITE_SYSTEMD_DIR="$CONF" timeout 120 "$ROOT/install.sh" "${install_args[@]}" 2>&1); rc=$?
check "./install.sh with INSTALL_KITE_SKIP_DOWNLOAD uses the installed binary" contains "$rc $out" "0 [INFO]  INSTALL_KITE_SKIP_DOWNLOAD: using $BIN/kite"
check "and does not restart kite" equals "$(cat "$PIDF")" "$pid"
check "an agent without a token is refused before anything happens" fails_with "an agent needs KITE_TOKEN" \
  env KITE_URL=https://127.0.0.1:1 INSTALL_KITE_BIN_DIR="$WORK/none" sh "$ROOT/install.sh"

# The tools a user reaches for on the node.
kc run sleeper --image kite.test/shell:1 --restart Never --command -- sleep 3600 >/dev/null
wait_for 60 "the pod to run" running sleeper
check "kite kubectl runs the system's kubectl" contains "$("$BIN/kite" kubectl get pods 2>&1)" "sleeper"
check "kite ps lists the pod's container from containerd" contains "$("$BIN/kite" ps --data-dir "$DATA")" "default/sleeper"
check "kite ctr lists it in the pods' namespace" contains "$(KITE_DATA_DIR="$DATA" "$BIN/kite" ctr containers ls 2>&1)" "kite.test/shell:1"
check "kite check-config passes on this host" "$BIN/kite" check-config --data-dir "$DATA" \
  --https-listen-port "$(free_port)" --kubelet-port "$(free_port)"
mkdir -p "$WORK/emptypath"
out=$(PATH="$WORK/emptypath" "$BIN/kite" check-config --data-dir "$DATA" --https-listen-port "$(free_port)" --kubelet-port "$(free_port)"); rc=$?
check "kite check-config fails without containerd on PATH" equals "$rc" 1
check "and says how to install it" contains "$out" "FAIL  containerd: not found on PATH"

if [ -n "${KITE_STATIC_BIN:-}" ]; then
  # A client in the chroot: `localhost` from the chroot's /etc/hosts, TLS to the server.
  printf '127.0.0.1 localhost\n' >"$CH/etc/hosts"
  sed "s#https://127.0.0.1:#https://localhost:#" "$KC" >"$CH/kubeconfig"
  timeout 10 chroot "$CH" /kite sim --kubeconfig /kubeconfig --nodes 1 --node-prefix chroot- >"$WORK/chroot-sim.log" 2>&1 &
  sim=$!
  wait_for 10 "the chroot's simulated node to register" kc get node chroot-0
  check "the static binary in the chroot resolves localhost from its /etc/hosts and joins over TLS" kc get node chroot-0
  kill "$sim" 2>/dev/null; wait "$sim" 2>/dev/null
  kc delete node chroot-0 --wait=false >/dev/null 2>&1
fi

# The running container's output FIFOs are on /dev/shm (a tmpfs here), in this data dir's
# own directory, which the uninstall removes.
SHM_IO="/dev/shm/kite-io-$(stat -c %d-%i "$DATA")"
check "the container's output FIFOs are on /dev/shm" test -n "$(find "$SHM_IO" -name '*-stdout' -type p 2>/dev/null)"
# So are pod sandboxes: the pinned namespaces and the hosts files.
SHM_PODS="/dev/shm/kite-pods-$(stat -c %d-%i "$DATA")"
check "the pod's network namespace is pinned on /dev/shm" test -n "$(awk -v d="$SHM_PODS/" 'index($2, d) == 1 && $3 == "nsfs"' /proc/self/mounts)"

# Uninstall: nothing of kite's is left.
out=$("$BIN/kite-$NAME-uninstall.sh" 2>&1); rc=$?
check "kite-$NAME-uninstall.sh succeeds" equals "$rc:$out" "0:kite uninstalled"
snapshot >"$WORK/after.txt"
check "the uninstall leaves no kite process, mount, interface, table, cgroup or file" \
  equals "$(diff "$WORK/before.txt" "$WORK/after.txt" && echo same)" same
check "nor its FIFOs' directory on /dev/shm" test ! -e "$SHM_IO"
check "nor its sandboxes' directory" test ! -e "$SHM_PODS"
summary
