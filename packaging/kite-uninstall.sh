#!/bin/sh
# Removes kite: stops it, then deletes the binary, service, config and all data.
set -u
[ "$(id -u)" = 0 ] || { echo "kite-uninstall.sh: run as root" >&2; exit 1; }
BIN_DIR=$(dirname "$0")
"$BIN_DIR/kite-killall.sh" || true
if [ -f /etc/systemd/system/kite.service ]; then
  systemctl disable kite 2>/dev/null || true
  rm -f /etc/systemd/system/kite.service
  systemctl daemon-reload 2>/dev/null || true
fi
rm -rf /var/lib/kite /etc/kite /var/log/kite.log
rm -f "$BIN_DIR/kite" "$BIN_DIR/kite-killall.sh" "$BIN_DIR/kite-uninstall.sh"
echo "kite uninstalled"
