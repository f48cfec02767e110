#!/bin/sh
# Installs kite from this source tree and starts it.
#
#   ./install.sh                 build, install /usr/local/bin/kite, start `kite server`
#   ./install.sh --no-start      install only
#   ./install.sh -- <flags>      extra flags for `kite server` (e.g. -- --tls-san my.host)
#
# With systemd as PID 1 it installs and starts kite.service; otherwise (containers, CI VMs)
# it starts `kite server` in the background with its log at /var/log/kite.log.
# Environment: INSTALL_KITE_BIN_DIR (default /usr/local/bin), INSTALL_KITE_SKIP_BUILD=1 to use
# an existing target/release/kite.
set -eu
cd "$(dirname "$0")"

BIN_DIR=${INSTALL_KITE_BIN_DIR:-/usr/local/bin}
START=1
EXTRA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) START=0 ;;
    --) shift; EXTRA="$*"; break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs to $BIN_DIR and /etc/kite)" >&2; exit 1; }

if [ "${INSTALL_KITE_SKIP_BUILD:-0}" != 1 ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "install.sh: cargo is needed to build kite from source (install Rust with rustup)" >&2
    exit 1
  fi
  need=""
  command -v gcc >/dev/null 2>&1 || need="$need gcc"
  command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
  if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq $need >/dev/null; fi
  echo "[kite] building (release)"
  cargo build --release --quiet -p kite
fi

# What the node needs at run time (skipped with --disable-agent in the extra flags).
case " $EXTRA " in
  *" --disable-agent "*) ;;
  *)
    need=""
    command -v containerd >/dev/null 2>&1 || need="$need containerd"
    command -v runc >/dev/null 2>&1 || need="$need runc"
    command -v nft >/dev/null 2>&1 || need="$need nftables"
    if [ -n "$need" ]; then
      if command -v apt-get >/dev/null 2>&1; then
        echo "[kite] installing$need"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
      else
        echo "install.sh: kite's node needs$need; install them with your package manager" >&2
        exit 1
      fi
    fi
    ;;
esac

install -d "$BIN_DIR" /etc/kite
install -m 0755 target/release/kite "$BIN_DIR/kite"
install -m 0755 packaging/kite-killall.sh "$BIN_DIR/kite-killall.sh"
install -m 0755 packaging/kite-uninstall.sh "$BIN_DIR/kite-uninstall.sh"
echo "[kite] installed $BIN_DIR/kite ($("$BIN_DIR/kite" --version))"

[ "$START" = 1 ] || exit 0

if [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
  sed -e "s#@BIN_DIR@#$BIN_DIR#g" -e "s#@EXTRA@#$EXTRA#g" packaging/kite.service >/etc/systemd/system/kite.service
  systemctl daemon-reload
  systemctl enable --now kite.service
  echo "[kite] started kite.service (journalctl -u kite -f)"
else
  if [ -f /run/kite.pid ] && kill -0 "$(cat /run/kite.pid)" 2>/dev/null; then
    echo "[kite] already running (pid $(cat /run/kite.pid))"
  else
    # shellcheck disable=SC2086
    nohup "$BIN_DIR/kite" server $EXTRA >>/var/log/kite.log 2>&1 &
    echo $! >/run/kite.pid
    echo "[kite] no systemd here: started kite server in the background (pid $!, log /var/log/kite.log)"
  fi
fi
i=0
until [ -f /etc/kite/kite.yaml ] && "$BIN_DIR/kite" --version >/dev/null && \
      curl -sk --max-time 1 https://127.0.0.1:6443/readyz 2>/dev/null | grep -q ok; do
  i=$((i + 1))
  [ $i -lt 100 ] || { echo "[kite] did not become ready in 10s; see the log" >&2; exit 1; }
  sleep 0.1
done
echo "[kite] ready: export KUBECONFIG=/etc/kite/kite.yaml; kubectl get ns"
