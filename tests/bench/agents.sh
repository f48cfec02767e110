#!/usr/bin/env bash
# Agent benchmarks (issue 19), run by `cargo bench -p kite --bench agents` (as root): three
# machines in network namespaces (tests/e2e/machines.sh), with host-gw and then vxlan.
# - agent start to Ready: the agent's own "kite is ready" elapsed time, on its first join
#   (fetch the CA, certificates, register, network) and on a restart with its credentials.
# - pod-to-pod TCP throughput across nodes, as a ratio to host-to-host over the same link
#   (the namespaces' veths and bridge): one stream, the same program both ways (tcp.py,
#   1 MiB writes, 4 GiB, median of 3).
# - agent RSS idle and with 50 pods (kite alone; its containerd beside it).
# Prints one line per figure; docs/benchmarks.md keeps the last ones.
source "$(dirname "$0")/../lib.sh"
[ "$(id -u)" = 0 ] || { echo "the agent benchmarks need root"; exit 1; }
source "$(dirname "$0")/../e2e/machines.sh"
MB=4096
RUNS=${KITE_BENCH_RUNS:-3}
# KITE_BENCH_BACKENDS: the network backends to measure (the RSS figures come with host-gw).
# wireguard-native when wg is there (its throughput is a figure, not a target).
default_backends="host-gw vxlan"
command -v wg >/dev/null && default_backends="$default_backends wireguard-native"
BACKENDS=${KITE_BENCH_BACKENDS:-$default_backends}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# elapsed_ms of the last "kite is ready" line of a log.
ready_ms() { grep "kite is ready" "$1" | tail -1 | sed 's/.*elapsed_ms=\([0-9]*\).*/\1/'; }
TCP="$(cd "$(dirname "$0")" && pwd)/tcp.py"
# throughput NETNS-FILE-OF-RECEIVER NETNS-FILE-OF-SENDER RECEIVER-IP: MiB/s.
throughput() {
  rm -f "$WORK/tcp.ready"
  nsenter --net="$1" python3 "$TCP" serve 5001 "$WORK/tcp.ready" &
  local l=$!
  wait_for 10 "the receiver" test -e "$WORK/tcp.ready"
  nsenter --net="$2" python3 "$TCP" send "$3" 5001 "$MB"
  wait $l 2>/dev/null
}
# The network namespace of the process running `sleep SECONDS` (a pod's, by its command).
pod_netns() { echo "/proc/$(ps -eo pid,args | awk -v s="$1" '$2 == "sleep" && $3 == s {print $1; exit}')/ns/net"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# rss PID: its RSS in MiB, and how much of it is anonymous and file-backed (code pages).
rss() { awk '/^(VmRSS|RssAnon|RssFile)/ {v[$1] = int($2 / 1024 + 0.5)} END {printf "%d MiB (anonymous %d, file-backed %d)", v["VmRSS:"], v["RssAnon:"], v["RssFile:"]}' "/proc/$1/status"; }
containerd_of() { ps -eo pid,args | awk -v d="$WORK/$1/data/agent/etc/containerd/config.toml" '$2 == "containerd" && $4 == d {print $1}'; }

net_up
for backend in $BACKENDS; do
  fresh_cluster "$backend"
  TOKEN=$(cat "$WORK/s/data/server/node-token")
  start_agent a1 --token "$TOKEN"
  start_agent a2 --token "$TOKEN"
  wait_for 30 "agents Ready" all_ready || { tail -20 "$WORK/a1/agent.log"; exit 1; }
  echo "$backend: agent join to Ready: $(ready_ms "$WORK/a1/agent.log") ms, $(ready_ms "$WORK/a2/agent.log") ms"
  node_down a1
  start_agent a1 --token "$TOKEN"
  wait_for 30 "a1 Ready" node_is_ready a1
  sleep 1
  echo "$backend: agent restart to Ready (kept credentials): $(ready_ms "$WORK/a1/agent.log") ms"

  # The floor: host to host over the same link; then pod to pod across it. The same
  # program does both, run in the nodes' and the pods' network namespaces.
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: sink}
spec:
  nodeSelector: {kubernetes.io/hostname: a2}
  containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3601"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: source}
spec:
  nodeSelector: {kubernetes.io/hostname: a1}
  containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3602"]}]
YAML
  wait_for 60 "sink" running sink; wait_for 60 "source" running source
  SINK=$(kc get pod sink -o jsonpath='{.status.podIP}')
  floor=(); pods=()
  for _ in $(seq "$RUNS"); do
    floor+=("$(throughput /run/netns/kite-mn-a2 /run/netns/kite-mn-a1 "${IP[a2]}")")
    pods+=("$(throughput "$(pod_netns 3601)" "$(pod_netns 3602)" "$SINK")")
  done
  kc delete pod sink source --wait=false >/dev/null
  f=$(printf '%s\n' "${floor[@]}" | median); p=$(printf '%s\n' "${pods[@]}" | median)
  echo "$backend: host-to-host $f MB/s, pod-to-pod across nodes $p MB/s: ratio $(awk -v p="$p" -v f="$f" 'BEGIN {printf "%.2f", p / f}') (runs: ${floor[*]} / ${pods[*]})"

  if [ "$backend" = host-gw ]; then
    sleep 20
    echo "agent RSS idle: $(rss "${PID[a2]}") (its containerd: $(( $(rss_kib "$(containerd_of a2)") / 1024 )) MiB)"
    # KITE_BENCH_SMAPS=FILE keeps the idle agent's smaps (which mappings its RSS is in).
    [ -z "${KITE_BENCH_SMAPS:-}" ] || cp "/proc/${PID[a2]}/smaps" "$KITE_BENCH_SMAPS"
    cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: fifty}
spec:
  replicas: 50
  selector: {matchLabels: {app: fifty}}
  template:
    metadata: {labels: {app: fifty}}
    spec:
      nodeSelector: {kubernetes.io/hostname: a2}
      terminationGracePeriodSeconds: 0
      containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3600"]}]
YAML
    fifty() { [ "$(kc get deploy fifty -o jsonpath='{.status.readyReplicas}')" = 50 ]; }
    wait_for 300 "50 pods Ready" fifty || echo "(only $(kc get deploy fifty -o jsonpath='{.status.readyReplicas}') Ready)"
    sleep 20
    echo "agent RSS with 50 pods: $(rss "${PID[a2]}") (its containerd: $(( $(rss_kib "$(containerd_of a2)") / 1024 )) MiB)"
    kc delete deploy fifty --wait=false >/dev/null
  fi
done
SUMMARY_DONE=1
