#!/usr/bin/env bash
# End-to-end: install.sh under a real systemd (issue 18). A Debian root filesystem made with
# debootstrap (from the machine's own apt sources) boots under `systemd-nspawn --boot`,
# in a network namespace of its own (--private-network: nothing it runs, kite-killall.sh
# included, touches the host's interfaces or tables); install.sh, piped inside with the
# release binary already in place (INSTALL_KITE_SKIP_DOWNLOAD: the download is the install
# tier's), writes kite.service, enables and starts it, and systemd sees READY=1
# (Type=notify); kubectl, run in the container's network namespace, answers; a re-run
# leaves the service alone; kite-uninstall.sh leaves no unit and no binary. The unit is
# also checked with `systemd-analyze verify`.
#
# The container's cgroup hierarchies are read-only (nspawn's default), so a node cannot
# run pods in it: kite runs there with --disable-agent, and Ready means the API serves.
# The node itself is installed and checked by the install tier.
source "$(dirname "$0")/../lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
echo "# kubectl: $KUBECTL"
[ "$(id -u)" = 0 ] || { echo "the systemd tier needs root"; exit 1; }
RELEASE_BIN=${KITE_STATIC_BIN:-$KITE_BIN}

# The unit as install.sh writes it, verified by systemd itself.
mkdir -p "$WORK/unit"
"$KITE_BIN" packaging kite.service | sed -e "s#@BIN_DIR@#$(dirname "$(readlink -f "$KITE_BIN")")#" \
  -e "s#@EXEC@#server --disable-agent#" -e "s#@ENV_FILE@#$WORK/unit/kite.service.env#" >"$WORK/unit/kite.service"
out=$(systemd-analyze verify "$WORK/unit/kite.service" 2>&1); rc=$?
check "systemd-analyze verify accepts kite.service" equals "$rc:$(grep -v 'is not a symlink\|Cannot add dependency\|network-online.target' <<<"$out")" "0:"

CACHE=/var/tmp/kite-systemd-rootfs
skip_boot() {
  echo "skip - no systemd-nspawn boot here: $1"
  summary
  exit 0
}
command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null ||
  skip_boot "systemd-nspawn or debootstrap is missing (apt-get install systemd-container debootstrap)"
if [ ! -x "$CACHE/lib/systemd/systemd" ]; then
  mirror=$(grep -hoE '^(deb |URIs: )https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
  [ -n "$mirror" ] || skip_boot "no Debian mirror in the apt sources to debootstrap from"
  rm -rf "$CACHE.new"
  timeout 600 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates \
    bookworm "$CACHE.new" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
    skip_boot "debootstrap from $mirror failed: $(tail -1 "$WORK/debootstrap.log")"
  mv "$CACHE.new" "$CACHE"
fi
cp -a "$CACHE" "$WORK/rootfs"

# Boot it. --keep-unit and --register=no: the host has no systemd to make a scope or
# register a machine with.
MACHINE=kite-e2e-$$
mkdir -p "$WORK/rootfs/usr/local/bin"
cp "$RELEASE_BIN" "$WORK/rootfs/usr/local/bin/kite"
setsid systemd-nspawn -q -D "$WORK/rootfs" --boot --register=no --keep-unit --private-network --machine "$MACHINE" \
  </dev/null >"$WORK/boot.log" 2>&1 &
NSPAWN=$!
stop_container() {
  [ -n "${NSPAWN:-}" ] || return 0
  kill "$NSPAWN" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$NSPAWN" 2>/dev/null
  NSPAWN=""
}
cleanup() {
  stop_container
  rm -rf "$WORK"
}
inside() { nsenter -t "$LEADER" -m -u -i -n -p -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
LEADER=""
for _ in $(seq 100); do
  LEADER=$(pgrep -P "$NSPAWN" | head -1)
  [ -n "$LEADER" ] && [ "$(inside systemctl is-system-running 2>/dev/null)" = running ] && break
  kill -0 "$NSPAWN" 2>/dev/null || break
  sleep 0.3
done
state=$([ -n "$LEADER" ] && inside systemctl is-system-running 2>/dev/null)
case "$state" in
  running|degraded) ;;
  *) skip_boot "systemd did not boot under systemd-nspawn (state '${state:-none}'): $(grep -v '^$' "$WORK/boot.log" | tail -1)" ;;
esac
check "systemd boots in the container" true

API_PORT=6443
install_kite() {
  inside env INSTALL_KITE_SKIP_DOWNLOAD=true INSTALL_KITE_SKIP_DEPS=true \
    timeout 120 sh -s - --disable-agent --https-listen-port "$API_PORT" --write-kubeconfig-mode 644 "$@" <"$ROOT/install.sh" 2>&1
}
out=$(install_kite); rc=$?
echo "$out" | sed 's/^/    | /'
check "install.sh succeeds under systemd" equals "$rc" 0
check "it uses the binary in place" contains "$out" "INSTALL_KITE_SKIP_DOWNLOAD: using /usr/local/bin/kite"
check "it starts kite.service" contains "$out" "starting kite.service"
check "kite.service is active" equals "$(inside systemctl is-active kite)" active
check "kite.service is Type=notify and kite said READY=1" equals \
  "$(inside systemctl show kite -p Type -p StatusText --value | tr '\n' ' ')" "notify kite is ready "
check "it is enabled" equals "$(inside systemctl is-enabled kite)" enabled
check "its env file is beside it" test -f "$WORK/rootfs/etc/systemd/system/kite.service.env"
export KUBECONFIG="$WORK/rootfs/etc/kite/kite.yaml"
# kubectl from the host, in the container's network namespace only.
kc() { nsenter -t "$LEADER" -n -- "$KUBECTL" "$@"; }
check "kubectl answers" contains "$(kc get ns default -o name 2>&1)" "namespace/default"
check "kubectl get nodes answers (no node: --disable-agent)" equals "$(kc get nodes -o name 2>&1)" ""
pid=$(inside systemctl show kite -p MainPID --value)
out=$(install_kite); rc=$?
check "a re-run succeeds" equals "$rc" 0
check "a re-run says nothing changed" contains "$out" "kite.service is running and nothing changed"
check "and does not restart it" equals "$(inside systemctl show kite -p MainPID --value)" "$pid"
out=$(install_kite --debug); rc=$?
check "a re-run with another flag succeeds" equals "$rc" 0
check "and restarts kite.service with it" bash -c "[ \"\$(nsenter -t $LEADER -m -u -i -n -p -- systemctl show kite -p MainPID --value)\" != $pid ] && grep -q -- '--debug' '$WORK/rootfs/etc/systemd/system/kite.service'"
check "kite.service is active again" equals "$(inside systemctl is-active kite)" active
check "journald holds kite's start-up lines without colour codes" bash -c \
  "nsenter -t $LEADER -m -u -i -n -p -- journalctl -u kite -o cat | grep -q 'kite is ready' && ! nsenter -t $LEADER -m -u -i -n -p -- journalctl -u kite -o cat | grep -q $'\x1b\\['"

out=$(inside /usr/local/bin/kite-uninstall.sh 2>&1); rc=$?
check "kite-uninstall.sh succeeds" equals "$rc:$out" "0:kite uninstalled"
check "the unit is gone" test ! -e "$WORK/rootfs/etc/systemd/system/kite.service"
check "the binary is gone" test ! -e "$WORK/rootfs/usr/local/bin/kite"
check "kite is not running" bash -c "[ \"\$(nsenter -t $LEADER -m -u -i -n -p -- systemctl is-active kite)\" != active ]"
check "its data is gone" test ! -e "$WORK/rootfs/var/lib/kite"
stop_container
summary
