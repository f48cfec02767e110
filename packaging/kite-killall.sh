#!/bin/sh
# Stops kite and removes what it created on this host. Everything kite creates is named
# kite*, so nothing else is touched. Safe to run twice.
set -u
[ "$(id -u)" = 0 ] || { echo "kite-killall.sh: run as root" >&2; exit 1; }
# KITE_DATA_DIR: the data dir of the kite to clean up (install.sh writes its own default).
# KITE_PID_FILE: the pid file of a kite started without an init system.
# KITE_SERVICE: the systemd or OpenRC service that runs kite.
# KITE_KILLALL_NODE_ONLY=1: leave the kite process alone (tests stop their own server).
# KITE_CGROUP_ROOT: the node's --cgroup-root (kite).
DATA=${KITE_DATA_DIR:-/var/lib/kite}
PID_FILE=${KITE_PID_FILE:-/run/kite.pid}
SERVICE=${KITE_SERVICE:-kite}
CG=${KITE_CGROUP_ROOT:-kite}
SOCK="$DATA/agent/run/containerd.sock"
CTR="ctr -a $SOCK -n k8s.io"

# Pods' containers first, while kite's containerd still answers.
if [ -S "$SOCK" ] && command -v ctr >/dev/null 2>&1; then
  # All at once first (two ctr runs, whatever the number of containers: each ctr run is a
  # Go program's start-up), then one by one, bounded, for whatever is left.
  ids=$($CTR containers ls -q 2>/dev/null)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    $CTR tasks rm -f $ids >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    $CTR containers rm $ids >/dev/null 2>&1 || true
  fi
  for id in $($CTR containers ls -q 2>/dev/null); do
    $CTR tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    i=0; while $CTR tasks ls -q 2>/dev/null | grep -qx "$id" && [ $i -lt 20 ]; do
      $CTR tasks rm -f "$id" >/dev/null 2>&1 || true; sleep 0.1; i=$((i + 1)); done
    $CTR containers rm "$id" >/dev/null 2>&1 || true
  done
fi
if [ "${KITE_KILLALL_NODE_ONLY:-0}" = 1 ]; then :
elif command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
  systemctl stop "$SERVICE"
elif command -v rc-service >/dev/null 2>&1 && rc-service "$SERVICE" status >/dev/null 2>&1; then
  rc-service "$SERVICE" stop >/dev/null 2>&1
fi
if [ "${KITE_KILLALL_NODE_ONLY:-0}" != 1 ] && [ -f "$PID_FILE" ]; then
  pid=$(cat "$PID_FILE")
  # Only a kite: a stale pid file may name another program by now.
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in */kite|*"/kite (deleted)") ;; *) pid="" ;; esac
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$PID_FILE"
fi
# This data dir's containerd and its shims (found by their socket, nothing else).
for p in /proc/[0-9]*; do
  # (A process may end during the scan: its cmdline is then gone, quietly.)
  cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
  case "$cmd" in
    *containerd-shim*"-address $SOCK "*|*"containerd --config $DATA/agent/etc/containerd/config.toml"*)
      kill -9 "${p#/proc/}" 2>/dev/null || true ;;
  esac
done
# Whatever is left in kite's pod cgroups, then the cgroups themselves, deepest first.
for f in $(find /sys/fs/cgroup -path "*/$CG/kubepods*" -name cgroup.procs 2>/dev/null); do
  for pid in $(cat "$f" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
done
find /sys/fs/cgroup -depth -type d \( -path "*/$CG/*" -o -name "$CG" \) -exec rmdir {} \; 2>/dev/null || true
# Network and mounts kite creates for pods: kite* interfaces, nftables tables and mounts
# under the data dir.
# Routes to other nodes' pods carry kite's protocol number (107): host-gw's are on the
# host's own link, so they do not go with kite's devices.
ip route flush proto 107 2>/dev/null || true
ip -6 route flush proto 107 2>/dev/null || true
for dev in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^kite' || true); do
  ip link delete "$dev" 2>/dev/null || true
done
if command -v nft >/dev/null 2>&1; then
  for t in $(nft list tables 2>/dev/null | awk '$3 ~ /^kite/ {print $2" "$3}' | tr ' ' ':'); do
    nft delete table "$(echo "$t" | cut -d: -f1)" "$(echo "$t" | cut -d: -f2)" 2>/dev/null || true
  done
fi
awk -v d="$DATA/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
# Containers' and exec'd processes' FIFOs, and pod sandboxes (pinned namespaces, hosts
# files): this data dir's directories on /dev/shm (kite-io-<dev>-<inode>,
# kite-exec-<dev>-<inode>, kite-pods-<dev>-<inode>).
if [ -d "$DATA" ]; then
  id=$(stat -c %d-%i "$DATA")
  awk -v d="/dev/shm/kite-pods-$id/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
  rm -rf "/dev/shm/kite-io-$id" "/dev/shm/kite-exec-$id" "/dev/shm/kite-pods-$id"
fi
echo "kite stopped"
