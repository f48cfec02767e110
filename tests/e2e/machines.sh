# Machines for multi-node tests and benchmarks (source after tests/lib.sh, as root): a
# server and agents, each in a network namespace of its own (kite-mn-<name>) and a mount
# namespace whose /sys is that network's, joined by a bridge in a namespace of its own
# (kite-mn-sw); each node with its own data dir, containerd, cgroup root (kite-mn-<name>),
# kubelet and pod-logs dir. Nothing outside the namespaces is addressed; net_down (run by
# cleanup) stops every node and removes what it made.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KILLALL="$ROOT/packaging/kite-killall.sh"
NS_SW=kite-mn-sw
NODES=(s a1 a2)
declare -A IP=([s]=172.30.99.10 [a1]=172.30.99.11 [a2]=172.30.99.12 [x]=172.30.99.13)
# Each machine's IPv6 address on the same link (the dual-stack round's host-gw routes via it).
declare -A IP6=([s]=fd99::10 [a1]=fd99::11 [a2]=fd99::12 [x]=fd99::13)
declare -A PID=()
IMAGES="$WORK/images"
mkdir -p "$IMAGES"
python3 "$ROOT/tests/images/build.py" "$IMAGES" >/dev/null

ns() { echo "kite-mn-$1"; }
# In a node's network namespace only (`ip netns exec` would also give it a mount
# namespace with a fresh /sys, without the cgroup mounts kite needs).
inns() { local n=$1; shift; nsenter --net="/run/netns/$(ns "$n")" "$@"; }
# MACHINE_SH runs a node as on another machine: in the node's network
# namespace and a mount namespace of its own whose /sys is that network's (as `ip netns
# exec` makes it), with the host's cgroup tree bound back in for the node's pods. Each
# step execs the next, so $! of a background run is the node's own pid.
MACHINE_SH='set -e
keep=$(mktemp -d /tmp/kite-mn-cg.XXXXXX)
mount --rbind /sys/fs/cgroup "$keep"
mount -t sysfs sysfs /sys
mount --rbind "$keep" /sys/fs/cgroup
umount -l "$keep"; rmdir "$keep"
# A userspace WireGuard (wireguard-go) keeps its socket in /run/wireguard, by device
# name: each machine has its own, kept across its restarts as a machine'"'"'s /run is.
if [ -n "${KITE_MN_RUN_WG:-}" ]; then mkdir -p "$KITE_MN_RUN_WG"; mount --bind "$KITE_MN_RUN_WG" /run/wireguard; fi
exec "$@"'
# `wg` on a running machine (its network, and its mount namespace for its /run/wireguard).
machine_wg() { local n=$1; shift; nsenter -t "${PID[$n]}" --net --mount wg "$@"; }
# kubectl in the server's namespace, with its admin kubeconfig.
kc() { inns s "$KUBECTL" --kubeconfig "$WORK/s/kubeconfig.yaml" "$@"; }

net_up() {
  if [ -e /run/netns/$NS_SW ]; then
    echo "another multinode run holds the kite-mn-* namespaces: wait for it (or remove them)"
    NODES=(); exit 1
  fi
  # Each machine mounts its own /run/wireguard over this one (removed at the end if the
  # test made it).
  [ -d /run/wireguard ] || { mkdir -m 0700 /run/wireguard && MADE_RUN_WG=1; }
  ip netns add $NS_SW
  ip -n $NS_SW link add kitemnbr type bridge
  ip -n $NS_SW link set kitemnbr up
  local n
  for n in "${NODES[@]}" x; do
    ip netns add "$(ns "$n")"
    ip -n $NS_SW link add "kitemn-$n" type veth peer name eth0 netns "$(ns "$n")"
    ip -n $NS_SW link set "kitemn-$n" master kitemnbr up
    ip -n "$(ns "$n")" addr add "${IP[$n]}/24" dev eth0
    ip -n "$(ns "$n")" addr add "${IP6[$n]}/64" dev eth0 nodad
    ip -n "$(ns "$n")" link set eth0 up
    ip -n "$(ns "$n")" link set lo up
    # A machine has a default route (the service proxy's DNAT happens after routing),
    # of each family (the dual-stack round's IPv6 cluster IPs).
    ip -n "$(ns "$n")" route add default dev eth0
    ip -n "$(ns "$n")" -6 route add default dev eth0
  done
}

node_down() { # NAME: stops the node's kite and removes what it made
  local n=$1
  if [ -n "${PID[$n]:-}" ]; then
    kill "${PID[$n]}" 2>/dev/null
    for _ in $(seq 50); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${PID[$n]}" 2>/dev/null
    wait "${PID[$n]}" 2>/dev/null
    PID[$n]=""
  fi
}

node_clean() {
  local n=$1
  # kite-killall.sh removes kite* interfaces where it runs: always in a namespace of the
  # test's (the node's, or a scratch one if that is gone), never the host's.
  local where
  where=$(ns "$n")
  [ -e "/run/netns/$where" ] || { where=kite-mn-scratch; ip netns add $where 2>/dev/null; }
  # (Machine x is several machines in turn, each with a data dir of its own.)
  local d
  for d in "$WORK/$n/data" "$WORK/$n"/x?; do
    [ -d "$d" ] || continue
    nsenter --net="/run/netns/$where" env KITE_DATA_DIR="$d" KITE_KILLALL_NODE_ONLY=1 \
      KITE_CGROUP_ROOT="kite-mn-$n" sh "$KILLALL" >/dev/null 2>&1 || true
  done
  [ "$where" != kite-mn-scratch ] || ip netns del kite-mn-scratch 2>/dev/null
  true
}

# The fake server by the pid it wrote (python3 may be a wrapper that forks).
stop_fake() {
  [ -s "$WORK/x/listening" ] && kill "$(cat "$WORK/x/listening")" 2>/dev/null
  [ -n "${FAKE_PID:-}" ] && kill "$FAKE_PID" 2>/dev/null
  FAKE_PID=""; rm -f "$WORK/x/listening"
}

net_down() {
  local n
  for n in "${NODES[@]}" x; do node_down "$n"; done
  stop_fake
  for n in "${NODES[@]}" x; do node_clean "$n"; done
  for n in "${NODES[@]}" x; do ip netns del "$(ns "$n")" 2>/dev/null; done
  ip netns del $NS_SW 2>/dev/null
  [ -z "${MADE_RUN_WG:-}" ] || rmdir /run/wireguard 2>/dev/null
  true
}
# The nodes go before lib.sh removes $WORK (their clean-up finds them by their data dirs).
cleanup() { net_down; rm -rf "$WORK"; }

# Flags every node takes: its own data dir, cgroup root, logs, and the test's images.
node_flags() {
  local n=$1
  mkdir -p "$WORK/$n/data/agent/images"
  cp "$IMAGES"/*.tar "$WORK/$n/data/agent/images/"
  # DUAL_NODE_IP=1: both InternalIPs (`--node-ip v4,v6`).
  echo --data-dir "$WORK/$n/data" --node-name "$n" --node-ip "${IP[$n]}${DUAL_NODE_IP:+,${IP6[$n]}}" \
    --cgroup-root "kite-mn-$n" --pod-logs-dir "$WORK/$n/log/pods" \
    --eviction-hard "nodefs.available<1%,imagefs.available<1%"
}

# (The grace period stays above the kubelet's 10 s lease renewals, with room for a loaded
# machine: below them a node flaps to Unknown between renewals, its pods are marked not
# Ready, and a PodDisruptionBudget then lets them be evicted as unhealthy, as upstream.)
start_kite_server() { # BACKEND [flags]
  local backend=$1; shift
  # shellcheck disable=SC2046
  KITE_MN_RUN_WG="$WORK/s/run-wireguard" nsenter --net=/run/netns/kite-mn-s unshare --mount --propagation private sh -c "$MACHINE_SH" machine "$KITE_BIN" server $(node_flags s) --advertise-address "${IP[s]}" \
    --write-kubeconfig "$WORK/s/kubeconfig.yaml" --network-backend "$backend" \
    --node-monitor-grace-period 25s --default-not-ready-toleration-seconds 5 \
    --default-unreachable-toleration-seconds 5 "$@" >>"$WORK/s/server.log" 2>&1 &
  PID[s]=$!
}

start_agent() { # NAME [flags]
  local n=$1; shift
  # shellcheck disable=SC2046
  KITE_MN_RUN_WG="$WORK/$n/run-wireguard" nsenter --net="/run/netns/$(ns "$n")" unshare --mount --propagation private sh -c "$MACHINE_SH" machine "$KITE_BIN" agent $(node_flags "$n") --server "https://${IP[s]}:6443" \
    "$@" >>"$WORK/$n/agent.log" 2>&1 &
  PID[$n]=$!
}

ready_status() { kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null; }
node_is_ready() { [ "$(ready_status "$1")" = True ]; }
all_ready() { for n in "${NODES[@]}"; do node_is_ready "$n" || return 1; done; }

fresh_cluster() { # BACKEND [server flags]: stops every node, removes their state, starts the server
  local n
  for n in "${NODES[@]}"; do node_down "$n"; done
  for n in "${NODES[@]}"; do node_clean "$n"; rm -rf "${WORK:?}/$n"; mkdir -p "$WORK/$n"; done
  start_kite_server "$@"
  wait_for 20 "the server's API" kc get --raw /readyz || { tail -30 "$WORK/s/server.log"; exit 1; }
  wait_for 20 "the server's node Ready" node_is_ready s || { tail -30 "$WORK/s/server.log"; exit 1; }
}

