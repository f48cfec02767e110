#!/bin/sh
# Stops kite and removes what it created on this host. Everything kite creates is named
# kite*, so nothing else is touched. Safe to run twice.
set -u
[ "$(id -u)" = 0 ] || { echo "kite-killall.sh: run as root" >&2; exit 1; }
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kite 2>/dev/null; then
  systemctl stop kite
fi
if [ -f /run/kite.pid ]; then
  pid=$(cat /run/kite.pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f /run/kite.pid
fi
# Network and mounts kite creates for pods (later releases): kite* interfaces, nftables
# tables and mounts under the data dir.
for dev in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^kite' || true); do
  ip link delete "$dev" 2>/dev/null || true
done
if command -v nft >/dev/null 2>&1; then
  for t in $(nft list tables 2>/dev/null | awk '$3 ~ /^kite/ {print $2" "$3}' | tr ' ' ':'); do
    nft delete table "$(echo "$t" | cut -d: -f1)" "$(echo "$t" | cut -d: -f2)" 2>/dev/null || true
  done
fi
awk '$2 ~ "^/var/lib/kite/" {print $2}' /proc/self/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
echo "kite stopped"
