#!/bin/sh
# Installs kite and starts it, as K3s's installer does.
#
#   curl -sfL <release folder>/install.sh | sh -s - [flags for kite server or agent]
#   ./install.sh [flags]                      from a checkout (builds with cargo when no
#                                             release is configured)
#
# Everything on the command line goes to `kite server` (or `kite agent` when KITE_URL is
# set), e.g. `--write-kubeconfig-mode 644`; a first word `server` or `agent` picks one.
#
# Environment (K3s's variables under kite's names):
#   INSTALL_KITE_RELEASE_URL   folder holding kite-<arch> and sha256sum-<arch>.txt
#                              [default: the project's latest public release]
#   INSTALL_KITE_VERSION       a release to install instead of the latest (e.g. v0.2.0)
#   INSTALL_KITE_SKIP_DOWNLOAD=true  use the kite already in INSTALL_KITE_BIN_DIR (or build
#                              from this checkout when there is none)
#   INSTALL_KITE_SKIP_DEPS=true      do not install containerd, runc, nftables, conntrack
#   INSTALL_KITE_SKIP_ENABLE=true    do not enable or start the service
#   INSTALL_KITE_SKIP_START=true     enable but do not start it
#   INSTALL_KITE_EXEC          command and flags for kite (flags on the command line follow)
#   INSTALL_KITE_NAME          service name kite-<NAME> [default: kite, or kite-agent]
#   INSTALL_KITE_BIN_DIR       where kite and its scripts go [default: /usr/local/bin]
#   INSTALL_KITE_SYSTEMD_DIR   where the unit and its env file go [default:
#                              /etc/systemd/system; without systemd, /etc/kite]
#   KITE_URL, KITE_TOKEN       join a server as an agent
#   KITE_KUBECONFIG_MODE, KITE_CONFIG_FILE and every other KITE_* variable are kept in the
#   service's env file and reach kite.
set -e
set -o noglob

# The project's public releases (INSTALL_KITE_RELEASE_URL overrides).
RELEASES=https://github.com/kite-k8s/kite/releases

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() { echo "[ERROR] $*" >&2; exit 1; }

# One shell word for each argument, single-quoted, for unit files and `eval set --`.
quote() {
  for arg in "$@"; do
    printf '%s\n' "$arg" | sed "s/'/'\\\\''/g;1s/^/'/;\$s/\$/'/" | tr '\n' ' '
  done
}

# --- what to install, where ---------------------------------------------------------------
setup_env() {
  [ "$(id -u)" = 0 ] || fatal "run as root (sudo sh, or curl … | sudo sh -s -): kite installs to $BIN_DIR and starts a service"
  CMD=""
  case "${1:-}" in
    server|agent) CMD=$1; shift ;;
  esac
  # INSTALL_KITE_EXEC's words come first (its own first word may name the command).
  # shellcheck disable=SC2086
  set -- ${INSTALL_KITE_EXEC:-} "$@"
  case "${1:-}" in
    server|agent) [ -n "$CMD" ] || CMD=$1; shift ;;
  esac
  if [ -z "$CMD" ]; then
    if [ -n "${KITE_URL:-}" ]; then CMD=agent; else CMD=server; fi
  fi
  if [ "$CMD" = agent ]; then
    [ -n "${KITE_URL:-}" ] || fatal "an agent needs KITE_URL (the server's https://host:6443)"
    [ -n "${KITE_TOKEN:-}${KITE_TOKEN_FILE:-}" ] || fatal "an agent needs KITE_TOKEN (on the server: cat /var/lib/kite/server/token)"
    case "$KITE_URL" in https://*) ;; *) fatal "KITE_URL must start with https:// (got $KITE_URL)" ;; esac
  fi
  EXEC_ARGS=$(quote "$@")

  if [ -n "${INSTALL_KITE_NAME:-}" ]; then
    case "$INSTALL_KITE_NAME" in kite*) SYSTEM_NAME=$INSTALL_KITE_NAME ;; *) SYSTEM_NAME=kite-$INSTALL_KITE_NAME ;; esac
  elif [ "$CMD" = agent ]; then
    SYSTEM_NAME=kite-agent
  else
    SYSTEM_NAME=kite
  fi
  echo "$SYSTEM_NAME" | grep -Eq '^[a-z0-9][a-z0-9-]*$' || fatal "INSTALL_KITE_NAME must be lowercase letters, digits and '-' (got $INSTALL_KITE_NAME)"

  BIN_DIR=${INSTALL_KITE_BIN_DIR:-/usr/local/bin}
  mkdir -p "$BIN_DIR" 2>/dev/null || true
  if ! touch "$BIN_DIR/.kite-install" 2>/dev/null; then
    [ -z "${INSTALL_KITE_BIN_DIR:-}" ] || fatal "$BIN_DIR is not writable"
    BIN_DIR=/opt/bin; mkdir -p "$BIN_DIR"
    info "/usr/local/bin is read-only: installing to $BIN_DIR"
  fi
  rm -f "$BIN_DIR/.kite-install"

  if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    INIT=systemd
    CONF_DIR=${INSTALL_KITE_SYSTEMD_DIR:-/etc/systemd/system}
  elif [ -x /sbin/openrc-run ] && command -v rc-service >/dev/null 2>&1; then
    INIT=openrc
    CONF_DIR=/etc/kite
  else
    INIT=none
    CONF_DIR=${INSTALL_KITE_SYSTEMD_DIR:-/etc/kite}
  fi
  FILE_ENV=$CONF_DIR/$SYSTEM_NAME.service.env
  LOG_FILE=/var/log/$SYSTEM_NAME.log
  PID_FILE=/run/$SYSTEM_NAME.pid

  # Paths kite will use, for the wait below and the uninstall script: from the flags,
  # else the environment, else kite's defaults.
  DATA_DIR=${KITE_DATA_DIR:-/var/lib/kite}
  KUBECONFIG_FILE=${KITE_KUBECONFIG_OUTPUT:-/etc/kite/kite.yaml}
  POD_LOGS_DIR=${KITE_POD_LOGS_DIR:-/var/log/pods}
  CGROUP_ROOT=${KITE_CGROUP_ROOT:-kite}
  API_PORT=${KITE_HTTPS_LISTEN_PORT:-6443}
  while [ $# -gt 0 ]; do
    case "$1" in
      --data-dir|-d) DATA_DIR=$2; shift ;;
      --data-dir=*) DATA_DIR=${1#*=} ;;
      --write-kubeconfig|-o) KUBECONFIG_FILE=$2; shift ;;
      --write-kubeconfig=*) KUBECONFIG_FILE=${1#*=} ;;
      --pod-logs-dir) POD_LOGS_DIR=$2; shift ;;
      --pod-logs-dir=*) POD_LOGS_DIR=${1#*=} ;;
      --cgroup-root) CGROUP_ROOT=$2; shift ;;
      --cgroup-root=*) CGROUP_ROOT=${1#*=} ;;
      --https-listen-port) API_PORT=$2; shift ;;
      --https-listen-port=*) API_PORT=${1#*=} ;;
      --disable-agent) NO_NODE=1 ;;
    esac
    shift
  done
  case "$CMD" in server) ;; *) NO_NODE=""; KUBECONFIG_FILE="" ;; esac
}

# --- the binary ---------------------------------------------------------------------------
setup_arch() {
  case "$(uname -m)" in
    x86_64|amd64) ARCH=amd64 ;;
    aarch64|arm64) ARCH=arm64 ;;
    armv7*|armv6*|arm) ARCH=armhf ;;
    *) fatal "no kite release for $(uname -m) (there are amd64, arm64 and armhf)" ;;
  esac
}

# The checkout this script runs from, if it does (piped, $0 is the shell).
SRC_DIR=""
if [ -f "$0" ] && [ -f "$(dirname "$0")/crates/kite/Cargo.toml" ]; then
  SRC_DIR=$(cd "$(dirname "$0")" && pwd)
fi

download() { # URL FILE
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 -o "$2" "$1" || fatal "download of $1 failed"
  elif command -v wget >/dev/null 2>&1; then
    wget -qO "$2" "$1" || fatal "download of $1 failed"
  else
    fatal "curl or wget is needed to download kite"
  fi
}

sha256() { sha256sum "$1" 2>/dev/null | awk '{print $1}' || shasum -a 256 "$1" | awk '{print $1}'; }

# Sets NEW_BIN to the binary to install.
get_binary() {
  if [ "${INSTALL_KITE_SKIP_DOWNLOAD:-}" = true ]; then
    if [ -x "$BIN_DIR/kite" ]; then
      info "INSTALL_KITE_SKIP_DOWNLOAD: using $BIN_DIR/kite"
      NEW_BIN=$BIN_DIR/kite; return
    fi
    [ -n "$SRC_DIR" ] || fatal "INSTALL_KITE_SKIP_DOWNLOAD=true, but there is no $BIN_DIR/kite: put the binary there, or unset INSTALL_KITE_SKIP_DOWNLOAD"
    build_binary; return
  fi
  if [ -z "${INSTALL_KITE_RELEASE_URL:-}" ] && [ -n "$SRC_DIR" ]; then
    build_binary; return
  fi
  setup_arch
  if [ -n "${INSTALL_KITE_RELEASE_URL:-}" ]; then
    url=${INSTALL_KITE_RELEASE_URL%/}
  elif [ -n "${INSTALL_KITE_VERSION:-}" ]; then
    url=$RELEASES/download/$INSTALL_KITE_VERSION
  else
    url=$RELEASES/latest/download
  fi
  info "downloading kite-$ARCH and its checksum from $url"
  download "$url/sha256sum-$ARCH.txt" "$TMP_DIR/sha256sum.txt"
  want=$(awk -v f="kite-$ARCH" '$2 == f || $2 == "*"f {print $1}' "$TMP_DIR/sha256sum.txt")
  [ -n "$want" ] || fatal "sha256sum-$ARCH.txt at $url has no line for kite-$ARCH"
  download "$url/kite-$ARCH" "$TMP_DIR/kite"
  got=$(sha256 "$TMP_DIR/kite")
  [ "$got" = "$want" ] || fatal "kite-$ARCH from $url does not match sha256sum-$ARCH.txt (expected $want, got $got): nothing was installed"
  info "checksum verified ($got)"
  chmod 755 "$TMP_DIR/kite"
  NEW_BIN=$TMP_DIR/kite
}

build_binary() {
  command -v cargo >/dev/null 2>&1 || fatal "cargo is needed to build kite from this checkout (install Rust with rustup), or set INSTALL_KITE_RELEASE_URL to install a release"
  need=""
  command -v cc >/dev/null 2>&1 || need="$need gcc"
  command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
  [ -z "$need" ] || install_packages "building kite" $need
  info "building kite from $SRC_DIR (cargo build --release; minutes on a laptop)"
  (cd "$SRC_DIR" && cargo build --release -p kite)
  # cargo reads a relative CARGO_TARGET_DIR from the directory it runs in.
  case "${CARGO_TARGET_DIR:-}" in
    "") NEW_BIN=$SRC_DIR/target/release/kite ;;
    /*) NEW_BIN=$CARGO_TARGET_DIR/release/kite ;;
    *) NEW_BIN=$SRC_DIR/$CARGO_TARGET_DIR/release/kite ;;
  esac
  [ -x "$NEW_BIN" ] || fatal "the build made no $NEW_BIN"
}

# --- what the node needs from the OS ------------------------------------------------------
install_packages() { # WHY PKG...  (Debian's names; others' are mapped)
  why=$1; shift
  if ! command -v apt-get >/dev/null 2>&1; then
    # Fedora, RHEL and Alpine call conntrack's package conntrack-tools.
    # shellcheck disable=SC2046
    set -- $(for p in "$@"; do [ "$p" = conntrack ] && echo conntrack-tools || echo "$p"; done)
  fi
  if command -v apt-get >/dev/null 2>&1; then
    info "installing $* for $why (apt-get)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    info "installing $* for $why (dnf)"
    dnf install -y -q "$@" >/dev/null
  elif command -v yum >/dev/null 2>&1; then
    info "installing $* for $why (yum)"
    yum install -y -q "$@" >/dev/null
  elif command -v apk >/dev/null 2>&1; then
    info "installing $* for $why (apk)"
    apk add -q "$@" >/dev/null
  else
    fatal "no apt-get, dnf, yum or apk here: install $* (needed for $why) with your package manager, then run this again (or set INSTALL_KITE_SKIP_DEPS=true)"
  fi
}

setup_deps() {
  [ "${INSTALL_KITE_SKIP_DEPS:-}" != true ] || { info "INSTALL_KITE_SKIP_DEPS: not checking containerd, runc, nftables, conntrack"; return; }
  [ -z "$NO_NODE" ] || return 0
  need=""
  command -v containerd >/dev/null 2>&1 || need="$need containerd"
  command -v runc >/dev/null 2>&1 || need="$need runc"
  command -v nft >/dev/null 2>&1 || need="$need nftables"
  command -v conntrack >/dev/null 2>&1 || need="$need conntrack"
  # The wireguard-native backend sets keys and peers with wg, and runs wireguard-go where
  # the kernel has no WireGuard.
  case "$EXEC_ARGS ${KITE_NETWORK_BACKEND:-}" in
    *wireguard-native*)
      command -v wg >/dev/null 2>&1 || need="$need wireguard-tools"
      if [ ! -d /sys/module/wireguard ] && ! modprobe wireguard 2>/dev/null; then
        command -v wireguard-go >/dev/null 2>&1 || need="$need wireguard-go"
      fi ;;
  esac
  if [ -n "$need" ]; then
    # shellcheck disable=SC2086
    install_packages "the node" $need
  else
    info "containerd, runc, nftables and conntrack are installed"
  fi
}

# --- files --------------------------------------------------------------------------------
# Writes stdin to FILE (mode MODE) unless it already holds exactly that; CHANGED=1 if it
# wrote. (Give it a file on stdin, not a pipe: a pipeline's last command runs in a subshell
# whose CHANGED is lost.)
put() { # FILE MODE
  cat >"$TMP_DIR/put"
  if [ -f "$1" ] && cmp -s "$TMP_DIR/put" "$1"; then return 0; fi
  mkdir -p "$(dirname "$1")"
  install -m "$2" "$TMP_DIR/put" "$1.kite-new" && mv -f "$1.kite-new" "$1"
  CHANGED=1
}

install_files() {
  CHANGED=0
  if [ "$NEW_BIN" != "$BIN_DIR/kite" ]; then
    if [ -f "$BIN_DIR/kite" ] && [ "$(sha256 "$NEW_BIN")" = "$(sha256 "$BIN_DIR/kite")" ]; then
      info "$BIN_DIR/kite is already this version"
    else
      put "$BIN_DIR/kite" 755 <"$NEW_BIN"
      info "installed $BIN_DIR/kite"
    fi
  fi
  BIN_CHANGED=$CHANGED
  KITE="$BIN_DIR/kite"
  VERSION=$("$KITE" --version) || fatal "$KITE does not run on this host"
  if [ "$CMD" = agent ] && ! "$KITE" agent --help >/dev/null 2>&1; then
    fatal "$VERSION cannot run as an agent yet: install a server (unset KITE_URL)"
  fi
  # The scripts carry this install's paths.
  "$KITE" packaging kite-killall.sh | sed \
    -e "s#\${KITE_DATA_DIR:-/var/lib/kite}#\${KITE_DATA_DIR:-$DATA_DIR}#" \
    -e "s#\${KITE_PID_FILE:-/run/kite.pid}#\${KITE_PID_FILE:-$PID_FILE}#" \
    -e "s#\${KITE_SERVICE:-kite}#\${KITE_SERVICE:-$SYSTEM_NAME}#" \
    -e "s#\${KITE_CGROUP_ROOT:-kite}#\${KITE_CGROUP_ROOT:-$CGROUP_ROOT}#" | put "$BIN_DIR/kite-killall.sh" 755
  UNINSTALL=$BIN_DIR/$SYSTEM_NAME-uninstall.sh
  "$KITE" packaging kite-uninstall.sh | sed \
    -e "s#^SYSTEM_NAME=.*#SYSTEM_NAME=$SYSTEM_NAME#" \
    -e "s#^DATA_DIR=.*#DATA_DIR=$DATA_DIR#" \
    -e "s#^KUBECONFIG_FILE=.*#KUBECONFIG_FILE=$KUBECONFIG_FILE#" \
    -e "s#^POD_LOGS_DIR=.*#POD_LOGS_DIR=$POD_LOGS_DIR#" \
    -e "s#^CONF_DIR=.*#CONF_DIR=$CONF_DIR#" \
    -e "s#^PID_FILE=.*#PID_FILE=$PID_FILE#" \
    -e "s#^LOG_FILE=.*#LOG_FILE=$LOG_FILE#" | put "$UNINSTALL" 755
  if ! command -v kubectl >/dev/null 2>&1 && [ ! -e "$BIN_DIR/kubectl" ]; then
    ln -s kite "$BIN_DIR/kubectl"
    info "linked $BIN_DIR/kubectl to kite (runs the system's kubectl once you install one)"
  fi
  # The variables kite reads, kept for the service.
  CHANGED=0
  { env | grep -E '^(KITE|CONTAINERD)_' | sort || true; } >"$TMP_DIR/env"
  put "$FILE_ENV" 600 <"$TMP_DIR/env"
  SERVICE_CHANGED=$CHANGED
}

# --- the service --------------------------------------------------------------------------
unit_text() { # TEMPLATE
  "$KITE" packaging "$1" | sed \
    -e "s#@BIN_DIR@#$BIN_DIR#g" \
    -e "s#@NAME@#$SYSTEM_NAME#g" \
    -e "s#@ENV_FILE@#$FILE_ENV#g" \
    -e "s#@LOG_FILE@#$LOG_FILE#g" \
    -e "s#@EXEC@#$CMD $(echo "$EXEC_ARGS" | sed 's/[#&\\]/\\&/g')#g"
}

start_service() {
  if [ "${INSTALL_KITE_SKIP_ENABLE:-}" = true ]; then
    info "INSTALL_KITE_SKIP_ENABLE: not starting $SYSTEM_NAME"; return 1
  fi
  case "$INIT" in
    systemd)
      unit_text kite.service >"$TMP_DIR/unit"
      CHANGED=0; put "$CONF_DIR/$SYSTEM_NAME.service" 644 <"$TMP_DIR/unit"
      [ "$CHANGED" = 0 ] || SERVICE_CHANGED=1
      systemctl daemon-reload
      systemctl enable "$SYSTEM_NAME" >/dev/null 2>&1
      info "enabled $SYSTEM_NAME.service"
      [ "${INSTALL_KITE_SKIP_START:-}" != true ] || { info "INSTALL_KITE_SKIP_START: not starting it"; return 1; }
      if [ "$BIN_CHANGED$SERVICE_CHANGED" != 00 ] || ! systemctl is-active --quiet "$SYSTEM_NAME"; then
        info "starting $SYSTEM_NAME.service (it reports ready once the node is Ready)"
        systemctl restart "$SYSTEM_NAME"
      else
        info "$SYSTEM_NAME.service is running and nothing changed"
      fi
      LOGS="journalctl -u $SYSTEM_NAME"
      ;;
    openrc)
      unit_text kite.openrc >"$TMP_DIR/unit"
      CHANGED=0; put "/etc/init.d/$SYSTEM_NAME" 755 <"$TMP_DIR/unit"
      [ "$CHANGED" = 0 ] || SERVICE_CHANGED=1
      rc-update add "$SYSTEM_NAME" default >/dev/null
      [ "${INSTALL_KITE_SKIP_START:-}" != true ] || { info "INSTALL_KITE_SKIP_START: not starting it"; return 1; }
      if [ "$BIN_CHANGED$SERVICE_CHANGED" != 00 ] || ! rc-service "$SYSTEM_NAME" status >/dev/null 2>&1; then
        LOG_START=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
        rc-service "$SYSTEM_NAME" restart >/dev/null
      fi
      LOGS="tail -f $LOG_FILE"
      ;;
    none)
      # No init system to ask (a container, WSL, a CI machine): kite runs detached, its
      # command line kept beside the env file so a re-run knows whether anything changed.
      printf '%s\n' "$CMD $EXEC_ARGS" >"$TMP_DIR/exec"
      CHANGED=0; put "$CONF_DIR/$SYSTEM_NAME.exec" 644 <"$TMP_DIR/exec"
      [ "$CHANGED" = 0 ] || SERVICE_CHANGED=1
      [ "${INSTALL_KITE_SKIP_START:-}" != true ] || { info "INSTALL_KITE_SKIP_START: not starting it"; return 1; }
      running=""
      if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then running=$(cat "$PID_FILE"); fi
      if [ -n "$running" ] && [ "$BIN_CHANGED$SERVICE_CHANGED" = 00 ]; then
        info "kite is running (pid $running) and nothing changed"
      else
        if [ -n "$running" ]; then
          info "stopping kite (pid $running) to restart it"
          kill "$running"
          i=0; while kill -0 "$running" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
          kill -0 "$running" 2>/dev/null && fatal "kite (pid $running) did not stop in 30 s"
        fi
        LOG_START=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
        (
          set -a; . "$FILE_ENV"; set +a
          eval "set -- $EXEC_ARGS"
          exec setsid "$KITE" "$CMD" "$@" </dev/null >>"$LOG_FILE" 2>&1
        ) &
        echo $! >"$PID_FILE"
        info "no systemd or OpenRC here: started kite $CMD detached (pid $!, log $LOG_FILE)"
      fi
      LOGS="tail -f $LOG_FILE"
      ;;
  esac
  return 0
}

wait_ready() {
  # An agent is waited for when this run started it detached (systemd's start already
  # waits for its READY=1): its "kite is ready" line comes once it joined and its node is
  # Ready.
  [ "$CMD" = server ] || [ -n "$LOG_START" ] || return 0
  i=0
  what="the API"
  [ -n "$NO_NODE" ] || what="the node to be Ready"
  use_kubectl=""
  if [ -n "$LOG_START" ]; then
    # This run started it: its own "kite is ready" line (said once the API serves and the
    # node is Ready, as READY=1 to systemd), not a Node status left from before.
    what="kite to say it is ready"
  elif [ -z "$NO_NODE" ] && "$KITE" kubectl version --client >/dev/null 2>&1; then
    use_kubectl=1
  elif [ -z "$NO_NODE" ]; then
    what="the API (no kubectl here to ask for the node)"
  fi
  info "waiting for $what"
  while :; do
    if [ -n "$LOG_START" ]; then
      tail -c +$((LOG_START + 1)) "$LOG_FILE" 2>/dev/null | grep -q "kite is ready" && break
    elif [ -z "$use_kubectl" ]; then
      curl -sk --max-time 1 "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -q ok && break
    elif [ -f "$KUBECONFIG_FILE" ] && KUBECONFIG=$KUBECONFIG_FILE "$KITE" kubectl get nodes \
        -o 'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
      break
    fi
    i=$((i + 1))
    if [ $i -ge 600 ]; then
      [ "$INIT" != none ] || tail -n 20 "$LOG_FILE" >&2
      fatal "kite was not ready after 60 s: see its log ($LOGS)"
    fi
    if [ "$INIT" = none ] && ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      tail -n 20 "$LOG_FILE" >&2
      fatal "kite stopped: its log is above ($LOG_FILE)"
    fi
    sleep 0.1
  done
}

LOG_START=""
TMP_DIR=$(mktemp -d)
trap 'rm -rf "$TMP_DIR"' EXIT
NO_NODE=""
setup_env "$@"
get_binary
setup_deps
install_files
info "$VERSION"
if start_service; then
  wait_ready
  if [ "$CMD" = server ]; then
    info "kite is ready. Next:"
    echo "    export KUBECONFIG=$KUBECONFIG_FILE"
    echo "    kubectl get nodes                  (or: $BIN_DIR/kite kubectl get nodes)"
    echo "    logs: $LOGS; stop: $BIN_DIR/kite-killall.sh; remove: $UNINSTALL"
  else
    info "kite agent is running. Logs: $LOGS; stop: $BIN_DIR/kite-killall.sh; remove: $UNINSTALL"
  fi
fi
