#!/usr/bin/env bash
# End-to-end: how a node shares its resources (issue 16), with the real kubectl, as root.
# In-place pod resize: the `resize` subresource (patch and replace), the containers'
# cgroups changed live or by a restart as their resizePolicy says, the status's resources
# and allocatedResources, a resize the node cannot hold (PodResizePending, Infeasible), and
# upstream's refusals. Eviction: an emptyDir past its sizeLimit, and node pressure
# (DiskPressure from a threshold the disk crosses) evicting the pod that uses most above its
# requests. A node tier: it owns the kite0 bridge while it runs.
source "$(dirname "$0")/../lib.sh"
node_tier resources
start_server || { cat "$WORK/server.log"; exit 1; }
wait_for 20 "the node to be Ready" node_ready

cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: rs}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: live
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
    resources: {requests: {cpu: 20m, memory: 35Mi}, limits: {cpu: 30m, memory: 45Mi}}
  - name: restarts
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
    resizePolicy: [{resourceName: memory, restartPolicy: RestartContainer}]
    resources: {requests: {cpu: 20m, memory: 35Mi}, limits: {cpu: 30m, memory: 45Mi}}
YAML
wait_for 60 "rs to run" running rs
# A container's own cgroup, as it sees it (cgroup v2 or v1).
cg() {
  # Tried up to three times: an exec into a container held to 20-35m of CPU can time out
  # (runc's init runs in its cgroup) on a loaded machine.
  local out i
  for i in 1 2 3; do
    out=$(kc exec rs -c "$1" -- sh -c "if [ -f /sys/fs/cgroup/$2 ]; then cat /sys/fs/cgroup/$2; else cat /sys/fs/cgroup/$3; fi") && break
    sleep 1
  done
  printf '%s' "$out"
}
mem_limit() { cg "$1" memory.max memory/memory.limit_in_bytes; }
cpu_quota() { cg "$1" cpu.max cpu/cpu.cfs_quota_us | cut -d' ' -f1; }
status_of() { kc get pod rs -o jsonpath="{.status.containerStatuses[?(@.name==\"$1\")]$2}"; }

check "the status shows each container's resources" equals "$(status_of live .resources.limits.memory)" "45Mi"
check "and its allocatedResources" equals "$(status_of live .allocatedResources.cpu)" "20m"
check "the cgroup has the memory limit" equals "$(mem_limit live)" "$((45 * 1024 * 1024))"
check "and the CPU quota" equals "$(cpu_quota live)" "3000"

# --- a resize in place, and one by restart -----------------------------------------
kc patch pod rs --subresource resize -p '{"spec":{"containers":[
  {"name":"live","resources":{"requests":{"cpu":"25m","memory":"40Mi"},"limits":{"cpu":"35m","memory":"50Mi"}}},
  {"name":"restarts","resources":{"requests":{"cpu":"20m","memory":"40Mi"},"limits":{"cpu":"30m","memory":"50Mi"}}}]}}' >/dev/null
check "the spec takes the new resources" equals "$(kc get pod rs -o jsonpath='{.spec.containers[0].resources.limits.memory}')" "50Mi"
check "and the generation moves" equals "$(kc get pod rs -o jsonpath='{.metadata.generation}')" "2"
resized() {
  [ "$(kc get pod rs -o jsonpath='{.status.observedGeneration}')" = 2 ] &&
    [ "$(status_of live .resources.limits.memory)" = 50Mi ] &&
    [ "$(status_of restarts .resources.limits.memory)" = 50Mi ] &&
    [ "$(kc get pod rs -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
check "the kubelet actuates it" wait_for 60 "the resize" resized
check "the live container's memory limit changed in place" equals "$(mem_limit live)" "$((50 * 1024 * 1024))"
check "and its CPU quota" equals "$(cpu_quota live)" "3500"
check "without a restart" equals "$(status_of live .restartCount)" "0"
check "the RestartContainer one was restarted" equals "$(status_of restarts .restartCount)" "1"
check "with its new limit" equals "$(mem_limit restarts)" "$((50 * 1024 * 1024))"
check "allocatedResources follow" equals "$(status_of live .allocatedResources.memory)" "40Mi"
check "no resize condition is left" not_contains "$(kc get pod rs -o jsonpath='{.status.conditions[*].type}')" "PodResize"
events=$(kc get events --field-selector involvedObject.name=rs -o jsonpath='{range .items[*]}{.reason}{" "}{end}')
check "upstream's events" contains "$events" "ResizeCompleted"

# --- the resize subresource reads and replaces ---------------------------------------
check "GET pods/resize returns the pod" equals "$(kc get --raw /api/v1/namespaces/default/pods/rs/resize | python3 -c 'import json,sys; print(json.load(sys.stdin)["kind"])')" "Pod"
kc get pod rs -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
p["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "28m"
p["spec"]["containers"][0]["image"] = "kite.test/other:1"   # not a resize: dropped
json.dump(p, sys.stdout)' >"$WORK/rs.json"
kc replace --subresource resize -f "$WORK/rs.json" >/dev/null
check "PUT pods/resize changes the resources" equals "$(kc get pod rs -o jsonpath='{.spec.containers[0].resources.requests.cpu}')" "28m"
check "and nothing else" equals "$(kc get pod rs -o jsonpath='{.spec.containers[0].image}')" "kite.test/shell:1"
actuated() { [ "$(status_of live .allocatedResources.cpu)" = 28m ]; }
check "and is actuated" wait_for 60 "the CPU request" actuated

# --- refusals ----------------------------------------------------------------------------
check "removing a limit is refused" fails_with "resource limits cannot be removed" \
  kc patch pod rs --subresource resize --type json -p '[{"op":"remove","path":"/spec/containers/0/resources/limits/cpu"}]'
check "changing the QoS class (to Guaranteed) is refused" fails_with "Pod QOS Class may not change as a result of resizing" \
  kc patch pod rs --subresource resize -p '{"spec":{"containers":[
    {"name":"live","resources":{"requests":{"cpu":"35m","memory":"50Mi"}}},
    {"name":"restarts","resources":{"requests":{"cpu":"30m","memory":"50Mi"}}}]}}'
check "other resources are not mutable" fails_with "only cpu and memory resources are mutable" \
  kc patch pod rs --subresource resize --type json -p '[{"op":"add","path":"/spec/containers/0/resources/requests/ephemeral-storage","value":"1Gi"}]'
check "requests above limits are refused" fails_with "must be less than or equal to cpu limit" \
  kc patch pod rs --subresource resize --type json -p '[{"op":"replace","path":"/spec/containers/0/resources/requests/cpu","value":"90m"}]'
check "a plain update still may not change resources" fails_with "pod updates may not change fields" \
  kc patch pod rs --type json -p '[{"op":"replace","path":"/spec/containers/0/resources/requests/cpu","value":"21m"}]'
check "and the refusals changed nothing" equals "$(kc get pod rs -o jsonpath='{.metadata.generation}')" "3"

# --- more than the node has: Infeasible ----------------------------------------------
kc patch pod rs --subresource resize --type json -p '[{"op":"replace","path":"/spec/containers/0/resources/requests/cpu","value":"900"},{"op":"replace","path":"/spec/containers/0/resources/limits/cpu","value":"900"}]' >/dev/null
pending() { [ "$(kc get pod rs -o jsonpath='{.status.conditions[?(@.type=="PodResizePending")].reason}')" = Infeasible ]; }
check "a resize beyond the node's capacity is Infeasible" wait_for 30 "PodResizePending" pending
check "with upstream's message" contains "$(kc get pod rs -o jsonpath='{.status.conditions[?(@.type=="PodResizePending")].message}')" "Node didn't have enough capacity: cpu, requested: "
check "the container keeps what it had" equals "$(status_of live .allocatedResources.cpu)" "28m"
check "and its cgroup" equals "$(cpu_quota live)" "3500"
kc patch pod rs --subresource resize --type json -p '[{"op":"replace","path":"/spec/containers/0/resources/requests/cpu","value":"25m"},{"op":"replace","path":"/spec/containers/0/resources/limits/cpu","value":"35m"}]' >/dev/null
cleared() { ! contains "$(kc get pod rs -o jsonpath='{.status.conditions[*].type}')" PodResizePending; }
check "a feasible resize clears the condition" wait_for 30 "the condition to go" cleared
kc delete pod rs --now >/dev/null 2>&1

# --- a memory limit below what the container uses: refused by the kubelet --------------
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: full}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; dd if=/dev/zero of=/dev/shm/fill bs=1M count=30 2>/dev/null; touch /tmp/filled; sleep 3600 & wait']
    resources: {requests: {memory: 16Mi}, limits: {memory: 64Mi}}
YAML
wait_for 60 "full to run" running full
filled() { kc exec full -- test -f /tmp/filled; }
wait_for 30 "the container to fill its memory" filled
kc patch pod full --subresource resize -p '{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"20Mi"}}}]}}' >/dev/null
in_error() { [ "$(kc get pod full -o jsonpath='{.status.conditions[?(@.type=="PodResizeInProgress")].reason}')" = Error ]; }
check "a memory limit below the container's usage: PodResizeInProgress, Error" wait_for 30 "the resize error" in_error
check "with upstream's message" contains "$(kc get pod full -o jsonpath='{.status.conditions[?(@.type=="PodResizeInProgress")].message}')" 'memory limit (20971520) below current usage'
check "the container keeps its limit" equals "$(kc get pod full -o jsonpath='{.status.containerStatuses[0].resources.limits.memory}')" "64Mi"
check "and runs on" equals "$(kc get pod full -o jsonpath='{.status.containerStatuses[0].restartCount}')" "0"
kc delete pod full --now >/dev/null 2>&1

# --- eviction: an emptyDir over its sizeLimit ------------------------------------------
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: filler}
spec:
  containers:
  - name: c
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; head -c 3145728 /dev/zero > /scratch/f; sleep 3600 & wait']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]
YAML
evicted() { [ "$(kc get pod "$1" -o jsonpath='{.status.phase}/{.status.reason}')" = Failed/Evicted ]; }
check "an emptyDir past its sizeLimit evicts its pod" wait_for 40 "filler to be evicted" evicted filler
check "with upstream's message" equals "$(kc get pod filler -o jsonpath='{.status.message}')" 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". '
check "and a DisruptionTarget condition" equals "$(kc get pod filler -o jsonpath='{.status.conditions[?(@.type=="DisruptionTarget")].reason}')" "TerminationByKubelet"
stopped() { [ -n "$(kc get pod filler -o jsonpath='{.status.containerStatuses[0].state.terminated}')" ]; }
check "its containers are stopped" wait_for 20 "the container to stop" stopped
check "an Evicted event" contains "$(kc get events --field-selector involvedObject.name=filler,reason=Evicted -o name)" "event"
kc delete pod filler --now >/dev/null 2>&1

# --- eviction: node pressure ---------------------------------------------------------
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: c
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
YAML
wait_for 60 "hog to run" running hog
check "no pressure with the test's thresholds" equals "$(kc get node kite-e2e -o jsonpath='{.status.conditions[?(@.type=="DiskPressure")].status}')" "False"
stop_server
# A threshold every disk crosses: the node is under disk pressure at once.
KITE_EVICTION_HARD='nodefs.available<100%' start_server --eviction-pressure-transition-period 5s \
  || { cat "$WORK/server.log"; exit 1; }
pressure() { [ "$(kc get node kite-e2e -o jsonpath='{.status.conditions[?(@.type=="DiskPressure")].status}')" = True ]; }
check "a crossed threshold: DiskPressure" wait_for 40 "DiskPressure" pressure
check "with upstream's reason" equals "$(kc get node kite-e2e -o jsonpath='{.status.conditions[?(@.type=="DiskPressure")].reason}')" "KubeletHasDiskPressure"
tainted() { contains "$(kc get node kite-e2e -o jsonpath='{.spec.taints}')" "node.kubernetes.io/disk-pressure"; }
check "and the node is tainted disk-pressure:NoSchedule" wait_for 20 "the taint" tainted
check "the pod is evicted" wait_for 60 "hog to be evicted" evicted hog
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  tolerations: [{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}]
  containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3600"]}]
YAML
check "a new pod under disk pressure is refused by the kubelet" wait_for 30 "late to be refused" evicted late
check "with upstream's message" equals "$(kc get pod late -o jsonpath='{.status.message}')" "The node had condition: [DiskPressure]. "
check "saying which resource ran low" contains "$(kc get pod hog -o jsonpath='{.status.message}')" "The node was low on resource: ephemeral-storage. Threshold quantity: "
stop_server
KITE_EVICTION_HARD='nodefs.available<1%' start_server --eviction-pressure-transition-period 5s \
  || { cat "$WORK/server.log"; exit 1; }
relieved() { [ "$(kc get node kite-e2e -o jsonpath='{.status.conditions[?(@.type=="DiskPressure")].status}')" = False ]; }
check "the condition clears once the signal does (after the transition period)" wait_for 60 "DiskPressure to clear" relieved
untainted() { not_contains "$(kc get node kite-e2e -o jsonpath='{.spec.taints}')" "disk-pressure"; }
check "and the taint goes" wait_for 20 "the taint to go" untainted
check "bad thresholds are refused" fails_with 'invalid value "cpu<1" for --eviction-hard' \
  "$KITE_BIN" server --data-dir "$WORK/other" --eviction-hard 'cpu<1'

summary
