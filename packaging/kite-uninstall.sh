#!/bin/sh
# Removes kite from this host: stops it and its pods (kite-killall.sh), then deletes its
# service, binary, scripts, config, kubeconfig, logs and all its data. The host's own
# networking is left as it was (kite-killall.sh removes only kite* interfaces and tables).
set -u
[ "$(id -u)" = 0 ] || { echo "kite-uninstall.sh: run as root" >&2; exit 1; }
# install.sh writes this install's values here (these are a plain `kite server`'s).
SYSTEM_NAME=kite
DATA_DIR=/var/lib/kite
KUBECONFIG_FILE=/etc/kite/kite.yaml
POD_LOGS_DIR=/var/log/pods
CONF_DIR=/etc/systemd/system
PID_FILE=/run/kite.pid
LOG_FILE=/var/log/kite.log
BIN_DIR=$(cd "$(dirname "$0")" && pwd)

KITE_DATA_DIR=$DATA_DIR KITE_PID_FILE=$PID_FILE KITE_SERVICE=$SYSTEM_NAME \
  sh "$BIN_DIR/kite-killall.sh" >/dev/null || true

if [ -f "$CONF_DIR/$SYSTEM_NAME.service" ]; then
  systemctl disable "$SYSTEM_NAME" >/dev/null 2>&1 || true
  rm -f "$CONF_DIR/$SYSTEM_NAME.service"
  systemctl daemon-reload 2>/dev/null || true
fi
if [ -f "/etc/init.d/$SYSTEM_NAME" ]; then
  rc-update delete "$SYSTEM_NAME" default >/dev/null 2>&1 || true
  rm -f "/etc/init.d/$SYSTEM_NAME"
fi
rm -f "$CONF_DIR/$SYSTEM_NAME.service.env" "$CONF_DIR/$SYSTEM_NAME.exec"
rmdir "$CONF_DIR" 2>/dev/null || true

# State: the data dir (datastore, certificates, containerd's images and snapshots), the
# kubeconfig, the pods' logs and the links to them, kite's own log.
if [ -d "$POD_LOGS_DIR" ]; then
  containers=$(dirname "$POD_LOGS_DIR")/containers
  if [ -d "$containers" ]; then
    find "$containers" -maxdepth 1 -type l -lname "$POD_LOGS_DIR/*" -delete 2>/dev/null || true
    rmdir "$containers" 2>/dev/null || true
  fi
  rm -rf "$POD_LOGS_DIR"
fi
rm -rf "$DATA_DIR"
rm -f "$KUBECONFIG_FILE" "$LOG_FILE" "$PID_FILE"
if [ "$SYSTEM_NAME" = kite ] || [ "$SYSTEM_NAME" = kite-agent ]; then
  rm -rf /etc/kite
fi

# The programs, last: kite-killall.sh is shared by every kite service on the host.
[ "$(readlink "$BIN_DIR/kubectl" 2>/dev/null)" = kite ] && rm -f "$BIN_DIR/kubectl"
others=$(ls "$BIN_DIR"/kite*-uninstall.sh 2>/dev/null | grep -vx "$BIN_DIR/$SYSTEM_NAME-uninstall.sh")
if [ -z "$others" ]; then
  rm -f "$BIN_DIR/kite" "$BIN_DIR/kite-killall.sh"
fi
rm -f "$BIN_DIR/$SYSTEM_NAME-uninstall.sh"
echo "kite uninstalled"
