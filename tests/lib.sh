# Shared helpers for kite's end-to-end tests: start a server on a free port in a temporary data
# dir, drive it with the real kubectl, assert, and always clean up.
# Every wait is bounded. Source this file; set KUBECTL to the kubectl binary to test with.

set -u
KITE_BIN=${KITE_BIN:-"${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}/debug/kite"}
KUBECTL=${KUBECTL:-/usr/bin/kubectl}
PASS=0
FAIL=0
FAILED_NAMES=()
WORK=$(mktemp -d /tmp/kite-e2e.XXXXXX)
KITE_PID=""
export HOME="$WORK/home"   # kubectl's discovery cache stays per run
mkdir -p "$HOME"

SIM_PIDS=()

cleanup() {
  stop_sims
  [ "${WITH_AGENT:-0}" = 1 ] && node_cleanup
  stop_server
  [ "${WITH_AGENT:-0}" = 1 ] && node_cleanup
  rm -rf "$WORK"
}

# node_cleanup: removes the containers, shims, mounts, cgroups, interfaces and nftables
# table this test's node made (kite-killall.sh scoped to this data dir).
node_cleanup() {
  KITE_DATA_DIR="${DATA:-$WORK/data}" KITE_KILLALL_NODE_ONLY=1 \
    sh "$(dirname "${BASH_SOURCE[0]}")/../packaging/kite-killall.sh" >/dev/null 2>&1 || true
}
# A tier that stops before its summary (an `exit 1` in set-up, a shell error) says so in a
# FAIL line, with the end of its server log, so the runner's report always names the cause.
# AFTER_CLEANUP: a command a tier adds (run after the server has stopped).
SUMMARY_DONE=0
AFTER_CLEANUP=""
on_exit() {
  local rc=$?
  # A second signal (timeout signals the tier and then its process group) must not cut the
  # cleanup short.
  trap ':' TERM INT HUP
  if [ "$SUMMARY_DONE" != 1 ]; then
    echo "FAIL - the tier stopped early (exit code $rc), before its summary"
    if [ -s "$WORK/server.log" ]; then
      echo "  --- server log (last 15 lines) ---"
      tail -15 "$WORK/server.log" | cut -c1-300 | sed 's/^/  /'
    fi
  fi
  # KITE_E2E_KEEP=FILE: the server log of a tier with a failure is kept there.
  if [ -n "${KITE_E2E_KEEP:-}" ] && { [ "$SUMMARY_DONE" != 1 ] || [ "$FAIL" -gt 0 ]; }; then
    cp "$WORK/server.log" "$KITE_E2E_KEEP" 2>/dev/null
  fi
  cleanup
  [ -z "$AFTER_CLEANUP" ] || eval "$AFTER_CLEANUP"
}
trap on_exit EXIT
# Killed (run.sh's timeout sends TERM): exit through on_exit, which cleans up. Without this
# trap bash dies at once and the node it made (kite0, tables, containers) stays behind,
# failing every node tier after it.
trap 'exit 143' TERM INT HUP

# A port nothing listens on, below the kernel's ephemeral range: a port the kernel hands
# out (bind to 0) is free now, but the next client connection of a parallel tier may take
# it as its source port before kite binds it (CI saw "Address already in use").
free_port() {
  python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    p = random.randrange(10000, max(lo, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port below the ephemeral range")
PY
}

# start_server [extra flags...]: starts kite on a free port; sets PORT, KUBECONFIG, DATA.
# The server runs no node unless WITH_AGENT=1.
start_server() {
  local agent=--disable-agent
  [ "${WITH_AGENT:-0}" = 1 ] && agent=""
  PORT=${PORT:-$(free_port)}
  DATA=${DATA:-"$WORK/data"}
  # A node's container logs stay in the test's directory; its kubelet takes a free port.
  export KITE_POD_LOGS_DIR=${KITE_POD_LOGS_DIR:-"$WORK/log/pods"}
  export KITE_KUBELET_PORT=${KITE_KUBELET_PORT:-$(free_port)}
  export KITE_PROXY_HEALTHZ_PORT=${KITE_PROXY_HEALTHZ_PORT:-$(free_port)}
  # Upstream's default eviction thresholds would evict every pod of a host whose disk is
  # over 85% full: tests other than the eviction tier's keep only a last-ditch one.
  export KITE_EVICTION_HARD=${KITE_EVICTION_HARD:-"nodefs.available<1%,imagefs.available<1%"}
  # The kubelet server's session steps in the log too (upgrades, exec processes started
  # and ended): a tier's report then shows how far a stuck session got.
  export KITE_LOG=${KITE_LOG:-info,kite_kubelet::server=debug}
  export KUBECONFIG="$WORK/kubeconfig.yaml"
  "$KITE_BIN" server --data-dir "$DATA" --https-listen-port "$PORT" --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 --write-kubeconfig "$KUBECONFIG" \
    --node-name kite-e2e $agent "$@" >>"$WORK/server.log" 2>&1 &
  KITE_PID=$!
  wait_for 10 "API server to answer" kc get --raw /readyz
}

stop_server() {
  if [ -n "$KITE_PID" ] && kill -0 "$KITE_PID" 2>/dev/null; then
    kill "$KITE_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$KITE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$KITE_PID" 2>/dev/null
  fi
  KITE_PID=""
}

# start_sim [flags...]: runs `kite sim` against the current server (its log: $WORK/sim.log).
start_sim() {
  "$KITE_BIN" sim --kubeconfig "$KUBECONFIG" "$@" >>"$WORK/sim.log" 2>&1 &
  SIM_PIDS+=($!)
}

stop_sims() {
  local p
  for p in "${SIM_PIDS[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  SIM_PIDS=()
}

kill9_server() {
  kill -9 "$KITE_PID" 2>/dev/null
  wait "$KITE_PID" 2>/dev/null
  KITE_PID=""
}

# kc ARGS...: kubectl, bounded (a command that hangs says so and fails; the tier goes on).
# In the foreground process group, so a tier killed by run.sh's timeout takes it along.
# Long-running kubectls (watches, port-forwards, follows) run "$KUBECTL" in the background.
KC_TIMEOUT=${KC_TIMEOUT:-120}
kc() {
  local rc=0
  timeout --foreground "$KC_TIMEOUT" "$KUBECTL" "$@" || rc=$?
  if [ "$rc" = 124 ]; then
    echo "kubectl $* did not end in ${KC_TIMEOUT} s; the server log's end:" >&2
    tail -8 "$WORK/server.log" 2>/dev/null | cut -c1-300 | sed 's/^/  /' >&2
  fi
  return "$rc"
}

# without_ws_race: drops the one line client-go's WebSocket executor logs when the server's
# "streams are ready" empty message (sent by upstream's kubelet and by kite alike) wins the
# race against the client creating its own streams: `Unknown stream id 1, discarding
# message`. The message carries no data, so nothing is lost; every other line passes.
without_ws_race() { grep -v '^E[0-9]\{4\} [0-9:.]* *[0-9]* websocket.go:[0-9]*\] Unknown stream id [0-9], discarding message$' || true; }

# wait_for SECONDS WHAT CMD...: retries CMD until it succeeds or the time is up.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}

# check NAME CMD...: runs one assertion.
check() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    PASS=$((PASS + 1))
    echo "ok   - $name"
  else
    FAIL=$((FAIL + 1))
    FAILED_NAMES+=("$name")
    echo "FAIL - $name"
    echo "$out" | sed 's/^/       /' | head -40
  fi
}

# contains HAYSTACK NEEDLE
contains() {
  if [[ "$1" == *"$2"* ]]; then return 0; fi
  echo "expected to find: $2"
  echo "in: $1"
  return 1
}

not_contains() {
  if [[ "$1" != *"$2"* ]]; then return 0; fi
  echo "did not expect: $2"
  echo "in: $1"
  return 1
}

equals() {
  if [ "$1" == "$2" ]; then return 0; fi
  echo "expected: $2"
  echo "got:      $1"
  return 1
}

# fails_with SUBSTRING CMD...: CMD must fail and print SUBSTRING.
fails_with() {
  local want=$1; shift
  local out
  if out=$("$@" 2>&1); then
    echo "expected failure, but it succeeded: $out"
    return 1
  fi
  contains "$out" "$want"
}

summary() {
  SUMMARY_DONE=1
  echo
  if [ "$FAIL" -gt 0 ]; then
    echo "failed: ${FAILED_NAMES[*]}"
    echo "--- server log (last 30 lines) ---"
    tail -30 "$WORK/server.log" 2>/dev/null
  fi
  echo "$PASS passed, $FAIL failed, in ${SECONDS}s"
  [ "$FAIL" -eq 0 ]
}

# node_tier NAME: what every node tier (kubelet, streams, volumes, resources) starts with: root, no
# other kite node on the host (it would own kite0), a node of its own (WITH_AGENT, DATA),
# and the offline test images in DATA's images dir.
node_tier() {
  echo "# kubectl: $KUBECTL"
  [ "$(id -u)" = 0 ] || { echo "the $1 tier needs root"; exit 1; }
  if ip link show kite0 >/dev/null 2>&1; then
    echo "a kite node already runs on this host (kite0 exists): stop it (kite-killall.sh) first"
    exit 1
  fi
  WITH_AGENT=1
  DATA="$WORK/data"
  mkdir -p "$DATA/agent/images"
  python3 "$(dirname "${BASH_SOURCE[0]}")/images/build.py" "$DATA/agent/images" >/dev/null
}

# Node tiers (kubelet.sh, cni.sh): the node, a pod, and the two-replica "hello" Deployment
# of the HTTP test image.
node_ready() { [ "$(kc get node kite-e2e -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
running() { [ "$(kc get pod "$1" -o jsonpath='{.status.phase}')" = Running ]; }
both_ready() { [ "$(kc get pods -l app=hello -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}')" = "True True " ]; }
# apply_hello [POD-SPEC-LINE]: an extra line for the pod spec (e.g. a grace period).
apply_hello() {
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      ${1:-}
      containers:
      - name: hello
        image: kite.test/hello:1
        ports: [{containerPort: 80}]
YAML
}

# curl with the admin client certificate, for raw API checks.
kcurl() {
  local dir="$WORK/certs"
  if [ ! -f "$dir/ca.crt" ]; then
    mkdir -p "$dir"
    python3 - "$KUBECONFIG" "$dir" <<'PY'
import base64, sys, re
text = open(sys.argv[1]).read()
def get(k):
    return base64.b64decode(re.search(k + r": (\S+)", text).group(1))
open(sys.argv[2] + "/ca.crt", "wb").write(get("certificate-authority-data"))
open(sys.argv[2] + "/client.crt", "wb").write(get("client-certificate-data"))
open(sys.argv[2] + "/client.key", "wb").write(get("client-key-data"))
PY
  fi
  curl -sS --max-time 20 --cacert "$dir/ca.crt" --cert "$dir/client.crt" --key "$dir/client.key" "$@"
}
