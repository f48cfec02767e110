#!/usr/bin/env bash
# End-to-end: looking into and reaching pods (issue 16) with the real kubectl, as root:
# exec (WebSocket v5 and SPDY), a terminal in tmux, cp both ways, attach, port-forward
# (tunnelled SPDY over WebSocket and plain SPDY; pod/, deploy/ and service/ targets),
# their errors, and sessions across a kite restart. A node tier: it owns the kite0
# bridge while it runs, so run.sh runs it after the kubelet tier, never beside it.
source "$(dirname "$0")/../lib.sh"
node_tier streams
# Background kubectls (port-forwards, sessions) and the tmux session go with the tier.
BG=()
TMUX_SESSION="kite-e2e-$$"
# A tmux server of the tier's own (its own socket): never a session in another tmux server
# that happens to run on the host, whose environment is not the tier's.
TMUX_SOCK="/tmp/kite-e2e-tmux-$$"
tm() { timeout 20 tmux -S "$TMUX_SOCK" "$@"; }
AFTER_CLEANUP='kill "${BG[@]}" 2>/dev/null; tm kill-server 2>/dev/null; rm -f "$TMUX_SOCK"'
start_server || { cat "$WORK/server.log"; exit 1; }
wait_for 20 "the node to be Ready" node_ready

cat <<'YAML' | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  containers:
  - name: main
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
    env: [{name: GREETING, value: from-the-spec}]
  - name: side
    image: kite.test/app:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  restartPolicy: Never
  containers:
  - name: r
    image: kite.test/shell:1
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'echo started; while read line; do echo "got: $line"; done; echo eof']
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{port: 8080, targetPort: 80}]
YAML
apply_hello
wait_for 60 "box to run" running box
wait_for 60 "reader to run" running reader
wait_for 60 "the hello pods to be Ready" both_ready

# --- exec ---------------------------------------------------------------------------
check "kubectl exec -- echo prints its output" equals "$(kc exec box -- echo "Testing exec")" "Testing exec"
rc=0; out=$(kc exec box -- sh -c 'exit 3' 2>&1) || rc=$?
check "exec -- sh -c 'exit 3' exits 3" equals "$rc" 3
check "and says so as upstream's kubectl does" contains "$out" "command terminated with exit code 3"
check "stdout and stderr stay apart" equals "$(kc exec box -- sh -c 'echo out; echo err >&2' 2>/dev/null)" "out"
check "stderr reaches kubectl's stderr" equals "$(kc exec box -c main -- sh -c 'echo out; echo err >&2' 2>&1 >/dev/null | without_ws_race)" "err"
check "exec -i passes stdin and ends it" equals "$(printf 'one\ntwo\n' | kc exec -i box -- sh -c 'cat; echo end')" "$(printf 'one\ntwo\nend')"
check "exec runs with the container's env" equals "$(kc exec box -- sh -c 'echo $GREETING')" "from-the-spec"
check "and its user (the image's USER app)" equals "$(kc exec box -c side -- id -u)" "1000"
check "and in its pod's network namespace" equals "$(kc exec box -- hostname)" "box"
big=$(kc exec box -- sh -c 'head -c 3000000 /dev/zero | tr "\0" x' | wc -c)
check "a large output (3 MB) arrives whole" equals "$big" 3000000
spdy() { KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kc "$@"; }
check "over SPDY too: output" equals "$(spdy exec box -- echo spdy)" "spdy"
rc=0; spdy exec box -- sh -c 'exit 5' >/dev/null 2>&1 || rc=$?
check "over SPDY too: exit codes" equals "$rc" 5
check "over SPDY too: stdin" equals "$(echo piped | spdy exec -i box -- cat)" "piped"
check "over SPDY too: stderr" equals "$(spdy exec box -c main -- sh -c 'echo e >&2' 2>&1 >/dev/null)" "e"
size=$(timeout 60 script -qec "stty cols 91 rows 37; $KUBECTL exec -it box -- sh -c 'sleep 1; stty size'" /dev/null </dev/null | tr -d '\r\0^@')
check "exec -t gets a terminal of the client's size" contains "$size" "37 91"
size=$(timeout 60 script -qec "stty cols 92 rows 38; KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false $KUBECTL exec -it box -- sh -c 'sleep 1; stty size'" /dev/null </dev/null | tr -d '\r\0^@')
check "over SPDY too" contains "$size" "38 92"
# A shell in tmux, typed into as a user would.
tm new-session -d -s "$TMUX_SESSION" -x 120 -y 30 "$KUBECTL exec -it box -- sh"
typed() { [ "$(kc exec box -- cat /tmp/typed 2>/dev/null)" = "tmux-42" ]; }
tmux_shell() {
  tm send-keys -t "$TMUX_SESSION" 'echo tmux-$((6*7)) > /tmp/typed' Enter
  wait_for 15 "the typed command to run" typed
}
check "kubectl exec -it … -- sh in tmux runs what is typed" tmux_shell
tm send-keys -t "$TMUX_SESSION" 'exit' Enter
session_over() { ! tm has-session -t "$TMUX_SESSION" 2>/dev/null; }
check "and ends with the shell" wait_for 15 "the tmux session to end" session_over

printf 'line one\nline two\n' >"$WORK/cp-in.txt"
mkdir -p "$WORK/cp-dir/sub"; echo deep >"$WORK/cp-dir/sub/f"
check "kubectl cp copies a file in" timeout 60 bash -c "$KUBECTL cp '$WORK/cp-in.txt' box:/tmp/in.txt -c main && [ \"\$($KUBECTL exec box -- cat /tmp/in.txt)\" = \"\$(cat '$WORK/cp-in.txt')\" ]"
check "and out again, unchanged" timeout 60 bash -c "$KUBECTL cp box:/tmp/in.txt '$WORK/cp-out.txt' -c main 2>/dev/null && cmp '$WORK/cp-in.txt' '$WORK/cp-out.txt'"
check "and a directory" timeout 60 bash -c "$KUBECTL cp '$WORK/cp-dir' box:/tmp/dir -c main && [ \"\$($KUBECTL exec box -- cat /tmp/dir/sub/f)\" = deep ]"

# Bad input gets upstream's answers, and the node goes on serving.
check "exec into a missing container is refused (upstream's message)" \
  fails_with "container nope is not valid for pod box" kc exec box -c nope -- true
check "exec into a missing pod is NotFound" fails_with 'pods "nope" not found' kc exec nope -- true
check "a command that does not exist fails with the runtime's reason" \
  fails_with "executable file not found" kc exec box -- no-such-command
cat <<'YAML' | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: nowhere}
spec:
  nodeSelector: {kite.test/none: "true"}
  containers: [{name: c, image: kite.test/shell:1}]
YAML
check "exec into a pod with no node says so (upstream's message)" \
  fails_with "pod nowhere does not have a host assigned" kc exec nowhere -- true
raw=$(kcurl --http1.1 -X POST "https://127.0.0.1:$PORT/api/v1/namespaces/default/pods/box/exec?container=main&command=true&stdout=true" 2>&1)
check "an exec request that is no upgrade is refused" contains "$raw" "Upgrade request required"
raw=$(kcurl --http1.1 -X POST -H "Connection: Upgrade" -H "Upgrade: SPDY/3.1" -H "X-Stream-Protocol-Version: v9.example" \
  "https://127.0.0.1:$PORT/api/v1/namespaces/default/pods/box/exec?container=main&command=true&stdout=true" 2>&1)
check "one with no protocol in common is refused (upstream's message)" contains "$raw" "unable to negotiate protocol"
check "and the node still serves exec" equals "$(kc exec box -- echo still)" "still"

# --- attach -------------------------------------------------------------------------
out=$( (sleep 1; echo hello; sleep 1) | timeout 20 "$KUBECTL" attach -i reader 2>/dev/null)
check "kubectl attach -i talks to a container reading stdin" contains "$out" "got: hello"
check "stdinOnce: its stdin ends with the session" contains "$out" "eof"
done_reader() { [ "$(kc get pod reader -o jsonpath='{.status.phase}')" = Succeeded ]; }
check "and the container completes" wait_for 20 "reader to complete" done_reader
out=$(timeout 60 script -qec "$KUBECTL run tty-run --image=kite.test/shell:1 -it --rm --restart=Never -- sh -c 'sleep 2; echo hi-from-tty; tty'" /dev/null < <(sleep 10) 2>&1)
check "kubectl run -it --rm attaches to a terminal" contains "$out" "hi-from-tty"
check "which is a pseudo-terminal" contains "$out" "/dev/pts/"

# --- port-forward -------------------------------------------------------------------
# pf LOG ARGS...: a port-forward in the background; waits until it listens.
pf() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  BG+=($!)
  wait_for 15 "the port-forward to listen" grep -q "Forwarding from" "$log"
}
P1=$(free_port)
pf "$WORK/pf1.log" "$KUBECTL" port-forward deploy/hello "$P1:80"
page=$(curl -sS --max-time 10 "http://127.0.0.1:$P1/")
check "port-forward deploy/NAME: curl localhost returns the page" contains "$page" "Hello from kite"
check "through IPv6 loopback too" contains "$(curl -sS --max-time 10 "http://[::1]:$P1/")" "Hello from kite"
codes=$(for i in $(seq 30); do curl -s -o /dev/null --max-time 20 -w '%{http_code}\n' "http://127.0.0.1:$P1/" & done; wait)
check "30 concurrent connections all answer" equals "$(grep -c '^200$' <<<"$codes")" 30
check "the pods' logs show the requests" contains "$(kc logs -l app=hello --tail=-1)" "response:200"
check "kubectl logs deploy/NAME reads one of them" contains "$(kc logs deploy/hello 2>/dev/null)" "serving hello-"
P2=$(free_port); P3=$(free_port)
pf "$WORK/pf2.log" env KUBECTL_PORT_FORWARD_WEBSOCKETS=false "$KUBECTL" port-forward pod/box "$P2:8081" "$P3:81"
kc exec box -- sh -c 'mkdir -p /tmp/w && echo local-only >/tmp/w/index.html && httpd -p 127.0.0.1:8081 -h /tmp/w'
check "over SPDY, several ports: one bound only to the pod's 127.0.0.1 is reached" \
  equals "$(curl -sS --max-time 10 "http://127.0.0.1:$P2/")" "local-only"
curl -s --max-time 10 "http://127.0.0.1:$P3/" >/dev/null 2>&1
check "a port nothing listens on: upstream's error" \
  wait_for 10 "the error" grep -q "error forwarding port 81 to pod box" "$WORK/pf2.log"
P4=$(free_port)
pf "$WORK/pf4.log" "$KUBECTL" port-forward service/hello "$P4:8080"
check "port-forward service/NAME reaches a pod behind it" contains "$(curl -sS --max-time 10 "http://127.0.0.1:$P4/")" "Hello from kite"
check "the node still serves new port-forwards" contains "$(curl -sS --max-time 10 "http://127.0.0.1:$P1/")" "Hello from kite"

# --- kubectl debug: an ephemeral container ------------------------------------------
kc debug box --image=kite.test/shell:1 --target=main --container=dbg -- sh -c 'ps; sleep 3600' >/dev/null 2>&1
dbg_running() { [ -n "$(kc get pod box -o jsonpath='{.status.ephemeralContainerStatuses[?(@.name=="dbg")].state.running.startedAt}')" ]; }
check "kubectl debug adds an ephemeral container that runs" wait_for 60 "the ephemeral container" dbg_running
check "it shares its target's processes (--target)" contains "$(kc logs box -c dbg)" "sleep 3600"
check "kubectl exec into it works" equals "$(kc exec box -c dbg -- echo in-debug)" "in-debug"
check "the pod's own containers keep running" equals "$(kc get pod box -o jsonpath='{.status.containerStatuses[?(@.name=="main")].restartCount}')" "0"
out=$( (sleep 2; echo 'echo typed-into-debug'; sleep 2) | timeout 20 "$KUBECTL" debug -i box --image=kite.test/shell:1 --container=dbg2 -- sh 2>/dev/null)
check "kubectl debug -i attaches to the new container" contains "$out" "typed-into-debug"
check "the API refuses to remove an ephemeral container (upstream's message)" \
  fails_with 'existing ephemeral containers "dbg" may not be removed' \
  kc replace --raw /api/v1/namespaces/default/pods/box/ephemeralcontainers -f <(kc get pod box -o json | python3 -c 'import json,sys; p=json.load(sys.stdin); p["spec"]["ephemeralContainers"]=[]; print(json.dumps(p))')

# --- activeDeadlineSeconds ------------------------------------------------------------
cat <<'YAML' | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: deadline}
spec:
  activeDeadlineSeconds: 3
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: kite.test/shell:1, command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']}]
YAML
deadline_failed() { [ "$(kc get pod deadline -o jsonpath='{.status.phase}/{.status.reason}')" = Failed/DeadlineExceeded ]; }
# 3 s from its start, plus its container's start and 1 s of grace: a timer set only by a
# later sync (which may come only at the minute's volume resync) would miss this.
check "a pod past its activeDeadlineSeconds fails with DeadlineExceeded, within seconds" wait_for 12 "the deadline" deadline_failed
check "with upstream's message" equals "$(kc get pod deadline -o jsonpath='{.status.message}')" "Pod was active on the node longer than the specified deadline"

# --- node stats through nodes/proxy --------------------------------------------------
cat <<'YAML' | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: burn}
spec:
  containers:
  - name: burn
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; while :; do :; done']
    resources: {limits: {cpu: 500m}}
YAML
wait_for 60 "burn to run" running burn
# stat FIELD: the burn pod's (or, with node., the node's) figure from the summary.
stat() {
  kc get --raw /api/v1/nodes/kite-e2e/proxy/stats/summary | python3 -c '
import json, sys
d = json.load(sys.stdin); f = sys.argv[1]
if f.startswith("node."):
    o = d["node"]; f = f[5:]
else:
    o = [p for p in d["pods"] if p["podRef"]["name"] == "burn"][0]
for k in f.split("."):
    o = o[int(k)] if isinstance(o, list) else o[k]
print(o)' "$1"
}
check "stats/summary names the node" equals "$(stat node.nodeName)" "kite-e2e"
check "with its memory in use" test "$(stat node.memory.workingSetBytes)" -gt 0
a=$(stat cpu.usageCoreNanoSeconds); sleep 3; b=$(stat cpu.usageCoreNanoSeconds)
check "a pod burning CPU: its CPU time rises (>0.5 s in 3 s)" test $((b - a)) -gt 500000000
burning() { [ "$(stat cpu.usageNanoCores 2>/dev/null || echo 0)" -gt 200000000 ]; }
check "and its rate shows in usageNanoCores (>0.2 cores)" wait_for 30 "a CPU rate" burning
check "its container's too" test "$(stat containers.0.cpu.usageCoreNanoSeconds)" -gt 0
check "and its memory" test "$(stat memory.workingSetBytes)" -gt 0
# metric VALUE-OF-NAME-AND-LABELS PATH: one sample's value from a Prometheus endpoint.
metric() { kc get --raw "/api/v1/nodes/kite-e2e/proxy/$2" | awk -v m="$1" 'index($0, m " ") == 1 {print $2; exit}'; }
cpu_metric='container_cpu_usage_seconds_total{container="burn",namespace="default",pod="burn"}'
a=$(metric "$cpu_metric" metrics/resource); sleep 2; b=$(metric "$cpu_metric" metrics/resource)
check "/metrics/resource: the container's CPU seconds rise" python3 -c "import sys; sys.exit(not float('$b') - float('${a:-0}') > 0.3)"
check "with its working set" test "$(metric 'pod_memory_working_set_bytes{namespace="default",pod="burn"}' metrics/resource | cut -d. -f1)" -gt 0
check "/metrics/cadvisor: cAdvisor's names" test "$(metric 'container_memory_usage_bytes{container="burn",namespace="default",pod="burn"}' metrics/cadvisor | cut -d. -f1)" -gt 0
check "/metrics: the kubelet's own" equals "$(metric 'kubelet_node_name{node="kite-e2e"}' metrics)" "1"
kc delete pod burn --now >/dev/null 2>&1

# --- a kite restart with sessions open ---------------------------------------------
"$KUBECTL" exec box -- sleep 300 >"$WORK/exec-long.log" 2>&1 &
exec_pid=$!; BG+=($exec_pid)
"$KUBECTL" logs -f deploy/hello >"$WORK/logs-f.log" 2>&1 &
logs_pid=$!; BG+=($logs_pid)
sleep 2
box_id=$(kc get pod box -o jsonpath='{.status.containerStatuses[0].containerID}')
stop_server
start_server || { cat "$WORK/server.log"; exit 1; }
ended() { ! kill -0 "$1" 2>/dev/null; }
check "an exec session ends when kite restarts" wait_for 20 "the exec session to end" ended "$exec_pid"
check "and a logs -f session" wait_for 20 "logs -f to end" ended "$logs_pid"
wait_for 30 "the node to be Ready again" node_ready
check "the pod keeps running (the same container)" equals "$(kc get pod box -o jsonpath='{.status.containerStatuses[0].containerID}')" "$box_id"
check "and new exec sessions work" equals "$(kc exec box -- echo again)" "again"
P5=$(free_port)
pf "$WORK/pf5.log" "$KUBECTL" port-forward deploy/hello "$P5:80"
check "and new port-forwards" contains "$(curl -sS --max-time 10 "http://127.0.0.1:$P5/")" "Hello from kite"

summary
