#!/usr/bin/env bash
# End-to-end: agents join with a token (issue 19). The machines are network namespaces this
# test makes on this host (kite-mn-*), joined by a bridge in a namespace of their own; a
# server and two agents, each with its own data dir, containerd, cgroup root, kubelet port
# and pod-logs dir. Checks: the join (a wrong token and another cluster's token refused; a
# fake server with another CA never receives the token), Ready within 10 s, a Deployment
# spread over three nodes, pod-to-pod across nodes, ClusterIP and NodePort from every node,
# DNS for pods on other nodes, logs/exec/port-forward through the server, restarts of the
# server and of an agent, and `kubectl drain`/`uncordon` — with host-gw, then vxlan, then
# wireguard-native (its network checks); then dual-stack rounds (IPv4 and IPv6 pods and
# Services, IPv6 between nodes with each backend).
# Nothing outside the namespaces is addressed; everything is removed on exit.
# BACKENDS="host-gw vxlan wireguard-native" (default) picks the backends to run.
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL"
[ "$(id -u)" = 0 ] || { echo "the multinode tier needs root"; exit 1; }
BACKENDS=${BACKENDS:-"host-gw vxlan wireguard-native"}
case " $BACKENDS " in
  *" wireguard-native "*)
    # WireGuard: the kernel's, else wireguard-go (tests/run.sh installs it and wg).
    if ! command -v wg >/dev/null || { ! command -v wireguard-go >/dev/null && ! [ -d /sys/module/wireguard ]; }; then
      echo "skip - wireguard-native: neither a WireGuard module nor wireguard-go, or no wg (apt-get install wireguard-tools wireguard-go)"
      BACKENDS=${BACKENDS/wireguard-native/}
    fi ;;
esac
source "$(dirname "$0")/machines.sh"

# wget from a node's own namespace (its host network).
from_node() { local n=$1; shift; inns "$n" timeout 5 wget -q -O- "$@"; }
pods_on() { kc get pods -l "$1" -o jsonpath="{range .items[?(@.spec.nodeName==\"$2\")]}{.metadata.name}{\" \"}{end}"; }
count_on() { local p; p=$(pods_on "$1" "$2"); set -- $p; echo $#; }

net_up

# --- a fake server with another CA, in its own namespace: it logs what it receives ----
mkdir -p "$WORK/x"
cat >"$WORK/x/fake.py" <<'PY'
import http.server, os, ssl, subprocess, sys
d, ip = sys.argv[1], sys.argv[2]
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", d + "/key.pem", "-out", d + "/cert.pem", "-days", "1",
                "-subj", "/CN=fake", "-addext", "subjectAltName=IP:" + ip], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
class H(http.server.BaseHTTPRequestHandler):
    def record(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode(errors="replace") if n else ""
        with open(d + "/requests", "a") as f:
            f.write("%s %s auth=%s body=%s\n" % (self.command, self.path, self.headers.get("Authorization", "-"), body))
    def do_GET(self):
        self.record()
        body = open(d + "/cert.pem", "rb").read()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.record()
        self.send_response(500); self.send_header("Content-Length", "0"); self.end_headers()
s = http.server.HTTPServer((ip, 6443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
open(d + "/listening", "w").write(str(os.getpid()))
s.serve_forever()
PY
nsenter --net=/run/netns/kite-mn-x python3 "$WORK/x/fake.py" "$WORK/x" "${IP[x]}" >"$WORK/x/fake.log" 2>&1 &
FAKE_PID=$!
wait_for 10 "the fake server" test -e "$WORK/x/listening"

first=1
for backend in $BACKENDS; do
echo "## backend: $backend"
# The vxlan round's certificates live 45 s: agents renew them while the round runs.
if [ "$backend" = vxlan ]; then fresh_cluster "$backend" --node-cert-validity 45s; else fresh_cluster "$backend"; fi
TOKEN=$(cat "$WORK/s/data/server/node-token")
SECRET=${TOKEN##*:}

if [ $first = 1 ]; then
  check "the server keeps a K10 token with its CA's hash" \
    equals "$(printf %s "$TOKEN" | cut -c1-3):${#TOKEN}" "K10:$((3 + 64 + 2 + 7 + ${#SECRET}))"
  check "token and node-token are the same" equals "$(cat "$WORK/s/data/server/token")" "$TOKEN"
  check "the token file is for root alone" equals "$(stat -c %a "$WORK/s/data/server/token")" "600"
  # A wrong secret: refused, said once per try, the node never registers.
  start_agent a1 --token "${TOKEN%:*}:wrong-secret"
  refused() { grep -q "cannot join: the server refused the token" "$WORK/a1/agent.log"; }
  check "a wrong token is refused with a clear message" wait_for 15 "the refusal" refused
  check "and the node does not register" fails_with NotFound kc get node a1
  check "no stack trace, no crash loop: the agent keeps trying" kill -0 "${PID[a1]}"
  node_down a1
  # A token made for another CA: the agent sees the CA does not match and stops there.
  other="K10$(printf '%064d' 0)::server:$SECRET"
  start_agent a1 --token "$other"
  mismatch() { grep -q "serves a CA whose hash is" "$WORK/a1/agent.log"; }
  check "a token for another CA is refused before it is sent" wait_for 15 "the mismatch" mismatch
  node_down a1
  # A fake server with another CA: it gets the CA request, never the token.
  start_agent a1 --token "$TOKEN" --server "https://${IP[x]}:6443"
  faked() { [ "$(grep -c "serves a CA whose hash is" "$WORK/a1/agent.log")" -ge 2 ]; }
  check "an impostor's CA is refused" wait_for 15 "the refusal" faked
  node_down a1
  check "the impostor was asked for its CA" contains "$(cat "$WORK/x/requests")" "GET /cacerts auth=-"
  check "and never received the token" not_contains "$(cat "$WORK/x/requests")" "$SECRET"
  check "nor any join request" not_contains "$(cat "$WORK/x/requests")" "POST"
  stop_fake
  rm -rf "${WORK:?}/a1"; mkdir -p "$WORK/a1"
fi

t0=$SECONDS
start_agent a1 --token "$TOKEN"
KITE_TOKEN="$TOKEN" start_agent a2
# The join's time is a target of the agents bench (tests/bench/agents.sh: < 5 s, 0.5 s
# measured); here it only has to happen, on a CI machine running every tier at once.
check "two agents join and are Ready" wait_for 60 "agents Ready" all_ready
SERIAL0=$(openssl x509 -noout -serial -in "$WORK/a2/data/agent/tls/client-kubelet.crt")
echo "# agents Ready after $((SECONDS - t0)) s"
check "the agent's node has its client certificate's identity" \
  contains "$(openssl x509 -noout -subject -in "$WORK/a1/data/agent/tls/client-kubelet.crt")" "system:node:a1"
check "and a node password Secret" equals "$(kc -n kube-system get secret a1.node-password.kite -o jsonpath='{.type}')" "kite.io/node-password"
wide=$(kc get nodes -o wide)
check "get nodes -o wide: roles and internal IPs" \
  contains "$(echo "$wide" | awk '$1=="s"{print $3, $6}')" "control-plane,master ${IP[s]}"
check "get nodes -o wide: an agent's" contains "$(echo "$wide" | awk '$1=="a2"{print $3, $6}')" "<none> ${IP[a2]}"
net_ok() { [ "$(kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="NetworkUnavailable")].status}')" = False ]; }
check "NetworkUnavailable=False once the routes are in" wait_for 10 "the network" net_ok a2

cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: web}}}
      containers:
      - {name: hello, image: kite.test/hello:1, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 80, nodePort: 30099}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: far}
spec:
  replicas: 1
  selector: {matchLabels: {app: far}}
  template:
    metadata: {labels: {app: far}}
    spec:
      nodeSelector: {kubernetes.io/hostname: a2}
      containers:
      - {name: hello, image: kite.test/hello:1}
---
apiVersion: v1
kind: Service
metadata: {name: far}
spec:
  selector: {app: far}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: s
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/shell:1, command: [sleep, "3600"]}
YAML
six_ready() { [ "$(kc get deploy web -o jsonpath='{.status.readyReplicas}')" = 6 ]; }
check "six replicas Ready" wait_for 60 "six replicas" six_ready
far_ready() { [ "$(kc get deploy far -o jsonpath='{.status.readyReplicas}')" = 1 ]; }
wait_for 60 "far Ready" far_ready
wait_for 60 "client running" running client
check "the replicas spread over the three nodes" \
  equals "$(count_on app=web s) $(count_on app=web a1) $(count_on app=web a2)" "2 2 2"
IPS=$(kc get pods -l app=web -o jsonpath='{.items[*].status.podIP}')
bad=""
for p in $(kc get pods -l app=web -o jsonpath='{.items[*].metadata.name}'); do
  # stdout names what was not reached; kubectl's stderr counts only if the exec failed.
  rc=0
  out=$(kc exec "$p" -- sh -c "for ip in $IPS; do timeout 3 wget -q -O- http://\$ip/ | grep -q 'Server name' || echo \"unreached \$ip\"; done" 2>"$WORK/reach.err") || rc=$?
  [ "$rc" = 0 ] || out="$out exec exited $rc: $(cat "$WORK/reach.err")"
  [ -z "$out" ] || bad="$bad $p:$out"
done
check "every pod reaches every other pod by IP, across nodes" equals "$bad" ""
CIP=$(kc get svc web -o jsonpath='{.spec.clusterIP}')
names=""
for n in s a1 a2; do
  for i in 1 2 3 4; do
    names="$names $(from_node "$n" "http://$CIP/" | sed -n 's/.*Server name: \(.*\)<.*/\1/p')"
  done
done
check "the ClusterIP answers on every node" not_contains "$names" "  "
check "and answers from pods on several nodes" test "$(echo "$names" | tr ' ' '\n' | sort -u | grep -c .)" -ge 3
np=""
for n in s a1 a2; do
  for target in s a1 a2; do
    from_node "$n" "http://${IP[$target]}:30099/" | grep -q "Server name" || np="$np $n->$target"
  done
done
check "NodePort on every node answers from every node" equals "$np" ""
check "a pod resolves and reaches a Service whose pod is on another node" \
  contains "$(kc exec client -- timeout 5 wget -q -O- http://far.default.svc.cluster.local/)" "Server name: far-"
FAR=$(kc get pods -l app=far -o jsonpath='{.items[0].metadata.name}')
if [ $first = 1 ]; then
  # NetworkPolicy on traffic between nodes: far (on a2) takes only web pods' connections.
  FARIP=$(kc get pod "$FAR" -o jsonpath='{.status.podIP}')
  WEB_A1=$(pods_on app=web a1 | cut -d' ' -f1)
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: far-from-web}
spec:
  podSelector: {matchLabels: {app: far}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
YAML
  blocked() { ! kc exec client -- timeout 2 wget -q -O- "http://$FARIP/" >/dev/null 2>&1; }
  check "NetworkPolicy holds for a pod on another node" wait_for 15 "the policy" blocked
  check "and lets the allowed pods of other nodes in" \
    contains "$(kc exec "$WEB_A1" -- timeout 3 wget -q -O- "http://$FARIP/")" "Server name: $FAR"
  kc delete networkpolicy far-from-web >/dev/null
fi
check "kubectl logs of a pod on an agent" contains "$(kc logs "$FAR")" "serving $FAR"
check "kubectl exec into a pod on an agent" equals "$(kc exec "$FAR" -- hostname)" "$FAR"
PF_PORT=18080
nsenter --net=/run/netns/kite-mn-s "$KUBECTL" --kubeconfig "$WORK/s/kubeconfig.yaml" port-forward "pod/$FAR" "$PF_PORT:80" >"$WORK/pf.log" 2>&1 &
PF=$!
pf_ok() { from_node s "http://127.0.0.1:$PF_PORT/" | grep -q "Server name: $FAR"; }
check "kubectl port-forward to a pod on an agent" wait_for 15 "port-forward" pf_ok
kill $PF 2>/dev/null; wait $PF 2>/dev/null

declare -A POD_MTU=([host-gw]=1500 [vxlan]=1450 [wireguard-native]=1420)
check "$backend: pods' interfaces have the link's MTU less the tunnel's cost" \
  equals "$(kc exec "$FAR" -- cat /sys/class/net/eth0/mtu)" "${POD_MTU[$backend]}"
if [ "$backend" = vxlan ]; then
  check "vxlan: kite.1 with its link's MTU less 50" \
    equals "$(inns a1 ip -o link show kite.1 | grep -o 'mtu [0-9]*')" "mtu 1450"
  check "vxlan: routes to other nodes' pods go over kite.1" \
    equals "$(inns a1 ip route show proto 107 | grep -c 'dev kite.1 onlink')" "2"
  # Certificates renewed in place: same process, new certificate, the node still serves.
  renewed() { grep -q "the node's certificates were renewed" "$WORK/a2/agent.log"; }
  check "an agent renews its certificates before they expire, without a restart" wait_for 60 "a renewal" renewed
  check "with a new certificate" not_contains "$(openssl x509 -noout -serial -in "$WORK/a2/data/agent/tls/client-kubelet.crt")" "$SERIAL0"
  check "in the same process" kill -0 "${PID[a2]}"
  while [ $((SECONDS - t0)) -lt 50 ]; do sleep 1; done
  check "its node stays Ready past the first certificate's expiry" node_is_ready a2
  check "and its kubelet serves with the renewed certificate (exec)" equals "$(kc exec "$FAR" -- hostname)" "$FAR"
elif [ "$backend" = wireguard-native ]; then
  check "wireguard: kite-wg with its link's MTU less 80" \
    equals "$(inns a1 ip -o link show kite-wg | grep -o 'mtu [0-9]*')" "mtu 1420"
  check "wireguard: routes to other nodes' pods go over kite-wg" \
    equals "$(inns a1 ip route show proto 107 | grep -c 'dev kite-wg')" "2"
  check "wireguard: a peer per other node, at its node IP" \
    equals "$(machine_wg a1 show kite-wg endpoints | awk '{print $2}' | sort | tr '\n' ' ')" "${IP[s]}:51820 ${IP[a2]}:51820 "
  check "wireguard: the peers' keys are the ones their nodes announce" \
    equals "$(machine_wg a1 show kite-wg peers | sort | tr '\n' ' ')" \
    "$(kc get nodes a2 s -o jsonpath='{range .items[*]}{.metadata.annotations.network\.kite\.io/wireguard-public-key}{"\n"}{end}' | sort | tr '\n' ' ')"
  shaken() { [ "$(machine_wg a1 show kite-wg latest-handshakes | awk '$2 > 0' | wc -l)" = 2 ]; }
  check "wireguard: the pods' traffic went through both tunnels" shaken
  check "wireguard: the private key is kept for root alone" \
    equals "$(stat -c %a "$WORK/a1/data/agent/wireguard/private.key")" 600
else
  check "host-gw: a route to each other node's pods via its IP" \
    equals "$(inns a1 ip route show proto 107 | grep -c "via 172.30.99")" "2"
fi

if [ $first = 1 ]; then
  # --- a DaemonSet: one pod on every node ---------------------------------------------
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: "kite.test/shell:1", command: [sleep, "3600"]}]
YAML
  check "a DaemonSet rolls out on every node" kc rollout status ds/node-agent --timeout=60s
  check "one daemon pod on each of the three nodes" \
    equals "$(count_on app=node-agent s) $(count_on app=node-agent a1) $(count_on app=node-agent a2)" "1 1 1"
  # --- drain, uncordon ----------------------------------------------------------------
  # A budget that needs every replica: the drain must stop at the first eviction.
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 6
  selector: {matchLabels: {app: web}}
YAML
pdb_seen() { [ "$(kc get pdb web -o jsonpath='{.status.currentHealthy}/{.status.disruptionsAllowed}')" = 6/0 ]; }
  check "the disruption controller keeps the budget's status" wait_for 20 "the PDB status" pdb_seen
  check "kubectl get pdb: upstream's columns" \
    contains "$(kc get pdb web)" "ALLOWED DISRUPTIONS"
  out=$(kc drain a1 --ignore-daemonsets --delete-emptydir-data --timeout=8s 2>&1)
  check "a PDB with minAvailable blocks a drain that would break it" \
    contains "$out" "Cannot evict pod as it would violate the pod's disruption budget."
  stay=$(count_on app=web a1)
  check "and the node's pods stay" equals "$stay" "2"
  [ "$stay" = 2 ] || { echo "$out" | tail -8; kc get pdb web -o yaml; kc get pods -o wide; kc get events --field-selector reason=Killing; }
  kc patch pdb web --type merge -p '{"spec":{"minAvailable":4}}' >/dev/null
  out=$(kc drain a1 --ignore-daemonsets --delete-emptydir-data --timeout=60s 2>&1)
  check "kubectl drain an agent (the budget allows it)" contains "$out" "node/a1 drained"
  check "evictions went through the eviction API" contains "$out" "evicted"
  check "drain --ignore-daemonsets leaves the daemon pod" contains "$out" "ignoring DaemonSet-managed Pods: default/node-agent-"
  check "which keeps running on the drained node" equals "$(count_on app=node-agent a1)" "1"
  moved() { [ "$(count_on app=web a1)" = 0 ] && six_ready; }
  check "its pods come back on the other nodes" wait_for 60 "the pods to move" moved
  check "a drained node is unschedulable" equals "$(kc get node a1 -o jsonpath='{.spec.unschedulable}')" "true"
  kc uncordon a1 >/dev/null
  kc run back --image kite.test/shell:1 --overrides='{"spec":{"nodeSelector":{"kubernetes.io/hostname":"a1"}}}' -- sleep 3600 >/dev/null
  check "after uncordon it takes pods again" wait_for 60 "a pod on a1" running back

  # --- restart the server while agents run ----------------------------------------------
  before=$(kc get pods -l app=far -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')
  node_down s
  sleep 2
  start_kite_server "$backend"
  wait_for 20 "the server's API" kc get --raw /readyz
  check "after a server restart the agents' nodes are Ready" wait_for 30 "agents Ready" all_ready
  check "and their pods kept running (same container)" \
    equals "$(kc get pods -l app=far -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')" "$before"
  # --- restart an agent: its pods are adopted -------------------------------------------
  node_down a2
  start_agent a2 --token "$TOKEN"
  sleep 2
  check "a restarted agent's node is Ready again" wait_for 30 "a2 Ready" node_is_ready a2
  check "its pods are adopted, not restarted" \
    equals "$(kc get pods -l app=far -o jsonpath='{.items[0].status.containerStatuses[0].containerID} {.items[0].status.containerStatuses[0].restartCount}')" "$before 0"
  check "the agent used its kept certificates" contains "$(cat "$WORK/a2/agent.log")" "using the certificates of an earlier join"
  # --- an agent that stops: NotReady, its pods replaced after the toleration ------------
  node_down a1
  not_ready() { [ "$(ready_status a1)" = Unknown ]; }
  check "a stopped agent's node goes NotReady" wait_for 60 "a1 NotReady" not_ready
  gone() { [ "$(count_on app=web a1)" = 0 ] && six_ready; }
  check "its pods are replaced elsewhere after the toleration" wait_for 60 "replacements" gone
  # --- the machine "x" joins in the other ways ----------------------------------------
  # Another machine that asks for an existing node's name is refused (node password).
  mkdir -p "$WORK/x"
  start_agent x --token "$TOKEN" --node-name a2 --data-dir "$WORK/x/xa"
  taken() { grep -q "node password rejected" "$WORK/x/agent.log"; }
  check "another machine cannot take over a node's name" wait_for 15 "the refusal" taken
  node_down x; node_clean x
  : >"$WORK/x/agent.log"
  # A bootstrap token with a TTL, from `kite token create`.
  KK=(--kubeconfig "$WORK/s/kubeconfig.yaml")
  boot=$(inns s "$KITE_BIN" token create --ttl 10m --description e2e "${KK[@]}" 2>&1)
  check "kite token create prints a K10 join token" test -n "$(echo "$boot" | grep -E '^K10[0-9a-f]{64}::[a-z0-9]{6}\.[a-z0-9]{16}$')"
  bid=$(echo "${boot##*::}" | cut -d. -f1)
  check "kite token list shows it with its expiry and usages" \
    contains "$(inns s "$KITE_BIN" token list "${KK[@]}" 2>&1 | grep "^$bid")" "auth,signing"
  # (Each join below is a machine of its own: its own node name and data dir.)
  xnode() { echo --node-name "$1" --data-dir "$WORK/x/$1"; }
  # (xb gets the test's images as every node does, for the DaemonSet's pod below.)
  mkdir -p "$WORK/x/xb/agent/images"; cp "$IMAGES"/*.tar "$WORK/x/xb/agent/images/"
  start_agent x --token "$boot" $(xnode xb)
  check "an agent joins with a bootstrap token" wait_for 20 "xb Ready" node_is_ready xb
  daemon_on_xb() { [ "$(kc get pods -l app=node-agent --field-selector spec.nodeName=xb -o name | wc -l)" = 1 ]; }
  check "a node that joins gets the DaemonSet's pod" wait_for 30 "a daemon pod on xb" daemon_on_xb
  running_on_xb() { [ "$(kc get pods -l app=node-agent --field-selector spec.nodeName=xb,status.phase=Running -o name | wc -l)" = 1 ]; }
  check "and it runs there" wait_for 60 "the daemon pod on xb Running" running_on_xb
  running_on_xb || kc describe pods -l app=node-agent --field-selector spec.nodeName=xb | tail -15
  node_down x; node_clean x; kc delete node xb >/dev/null 2>&1
  check "kite token delete" contains "$(inns s "$KITE_BIN" token delete "$bid" "${KK[@]}" 2>&1)" "deleted"
  check "and it is gone from the list" not_contains "$(inns s "$KITE_BIN" token list "${KK[@]}" 2>&1)" "$bid"
  : >"$WORK/x/agent.log"
  start_agent x --token "$boot" $(xnode xd)
  refused_x() { grep -q "cannot join: the server refused the token" "$WORK/x/agent.log"; }
  check "a deleted bootstrap token joins no more" wait_for 15 "the refusal" refused_x
  check "and that machine never became a node" fails_with NotFound kc get node xd
  node_down x; node_clean x; : >"$WORK/x/agent.log"
  # A bare secret: the agent trusts the CA on first use and says so.
  start_agent x --token "$SECRET" $(xnode xt)
  check "a short secret joins too" wait_for 20 "xt Ready" node_is_ready xt
  check "trusting the CA on first use, and saying so" contains "$(cat "$WORK/x/agent.log")" "trusting the CA this server presents on first use"
  # kubectl delete node: its routes go everywhere, and the running agent registers again.
  xcidr=$(kc get node xt -o jsonpath='{.spec.podCIDR}')
  has_route() { inns a2 ip route show proto 107 | grep -q "^$xcidr "; }
  check "a joined node's pods are routed to from the others" wait_for 10 "the route" has_route
  # The agent is paused while its node goes: running, it registers the node again at once,
  # mostly with the same range, and the others may then never be seen without the route.
  kill -STOP "${PID[x]}"
  kc delete node xt >/dev/null
  no_route() { ! has_route; }
  check "kubectl delete node removes its routes from the other nodes" wait_for 10 "no route" no_route
  kill -CONT "${PID[x]}"
  check "and the running agent registers its node again" wait_for 30 "xt back" node_is_ready xt
  check "a deleted node's password goes with it (a rebuilt machine may take the name)" \
    fails_with NotFound kc -n kube-system get secret xt.node-password.kite
  node_down x; node_clean x; kc delete node xt >/dev/null 2>&1
  # install.sh with KITE_URL and KITE_TOKEN installs an agent (piped, as a user does).
  mkdir -p "$WORK/x/bin"; cp "$KITE_BIN" "$WORK/x/bin/kite"
  out=$(nsenter --net=/run/netns/kite-mn-x unshare --mount --propagation private sh -c "$MACHINE_SH" machine \
    env -u KITE_BIN KITE_URL="https://${IP[s]}:6443" KITE_TOKEN="$TOKEN" INSTALL_KITE_SKIP_DOWNLOAD=true \
    INSTALL_KITE_SKIP_DEPS=true INSTALL_KITE_BIN_DIR="$WORK/x/bin" INSTALL_KITE_NAME=kite-mn-agent \
    INSTALL_KITE_SYSTEMD_DIR="$WORK/x/conf" timeout 120 sh -s - $(node_flags x) <"$ROOT/install.sh" 2>&1); rc=$?
  echo "$out" | sed 's/^/    | /'
  check "install.sh with KITE_URL installs and starts an agent" equals "$rc" 0
  check "and waits until it says it is ready" contains "$out" "kite agent is running"
  check "the installed agent's node is Ready" node_is_ready x
  check "the env file keeps KITE_URL and KITE_TOKEN" \
    equals "$(grep -c '^KITE_URL=\|^KITE_TOKEN=' "$WORK/x/conf/kite-mn-agent.service.env")" 2
  apid=$(cat /run/kite-mn-agent.pid 2>/dev/null)
  inns x "$WORK/x/bin/kite-mn-agent-uninstall.sh" >/dev/null 2>&1
  check "its uninstall script stops it" bash -c "[ -n '$apid' ] && ! kill -0 '$apid' 2>/dev/null"
  check "and removes its binary and data" bash -c "[ ! -e '$WORK/x/bin/kite' ] && [ ! -d '$WORK/x/data' ]"
  kc delete node x >/dev/null 2>&1
  kc delete ds node-agent --wait=false >/dev/null
  first=0
fi
done

# --- dual-stack (issue 17): IPv4 and IPv6 ranges; vxlan carries IPv6 pods between nodes
# over their IPv4 addresses, host-gw routes them via the nodes' IPv6 InternalIPs ---------
case " $BACKENDS " in *" wireguard-native "*) WG_DUAL=wireguard-native ;; *) WG_DUAL="" ;; esac
for dual in ${DUALSTACK_BACKENDS-vxlan host-gw $WG_DUAL}; do
echo "## dual-stack ($dual)"
DUAL_NODE_IP=""
[ "$dual" = host-gw ] && DUAL_NODE_IP=1
fresh_cluster "$dual" --cluster-cidr 10.42.0.0/16,fd42::/56 --service-cidr 10.43.0.0/16,fd43::/112
TOKEN=$(cat "$WORK/s/data/server/node-token")
start_agent a1 --token "$TOKEN"
start_agent a2 --token "$TOKEN"
wait_for 20 "the agents Ready" all_ready
check "the default ServiceCIDR holds both ranges" \
  equals "$(kc get servicecidr kubernetes -o jsonpath='{.spec.cidrs[*]}')" "10.43.0.0/16 fd43::/112"
check "the node gets an IPv4 and an IPv6 podCIDR" \
  equals "$(kc get node s -o jsonpath='{.spec.podCIDRs[*]}')" "10.42.0.0/24 fd42::/64"
cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: duo}
spec:
  replicas: 2
  selector: {matchLabels: {app: duo}}
  template:
    metadata: {labels: {app: duo}}
    spec:
      containers:
      - {name: hello, image: kite.test/hello:1}
---
apiVersion: v1
kind: Service
metadata: {name: duo}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: duo}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: six}
spec:
  ipFamilies: [IPv6]
  selector: {app: duo}
  ports: [{port: 8080, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: four}
spec:
  selector: {app: duo}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client6, labels: {app: client6}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/shell:1, command: [sleep, "3600"]}
YAML
duo_ready() { [ "$(kc get deploy duo -o jsonpath='{.status.readyReplicas}')" = 2 ]; }
wait_for 60 "duo Ready" duo_ready
wait_for 60 "client6 running" running client6
DUO=$(kc get pods -l app=duo -o jsonpath='{.items[0].metadata.name}')
ips=$(kc get pod "$DUO" -o jsonpath='{.status.podIPs[*].ip}')
check "a pod has an IPv4 and an IPv6 address, from the node's ranges" \
  bash -c "[[ '$ips' =~ ^10\.42\.[0-9]+\.[0-9]+\ fd42:[0-9a-f:]+$ ]]"
V6=${ips#* }
check "a pod reaches another pod over IPv6" \
  contains "$(kc exec client6 -- timeout 5 wget -q -O- "http://[$V6]/" 2>&1)" "Server name: $DUO"
check "the node reaches a pod over IPv6" contains "$(from_node s "http://[$V6]/")" "Server name: $DUO"
check "its eth0 holds the IPv6 address" \
  equals "$(kc exec client6 -- sh -c 'ip -6 addr show dev eth0 scope global' | grep -c 'inet6 fd42:')" 1
check "a PreferDualStack Service gets a cluster IP of each family" \
  equals "$(kc get svc duo -o jsonpath='{.spec.ipFamilyPolicy} {.spec.ipFamilies[*]}')" "PreferDualStack IPv4 IPv6"
check "each agent's node gets an IPv6 /64 of its own" \
  equals "$(kc get node a1 -o jsonpath='{.spec.podCIDRs[1]}') $(kc get node a2 -o jsonpath='{.spec.podCIDRs[1]}')" \
  "$(kc get node a1 -o jsonpath='{.spec.podCIDR}' | awk -F. '{printf "fd42:0:0:%x::/64", $3}') $(kc get node a2 -o jsonpath='{.spec.podCIDR}' | awk -F. '{printf "fd42:0:0:%x::/64", $3}')"
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: far6, labels: {app: duo}}
spec:
  nodeName: a2
  terminationGracePeriodSeconds: 0
  containers:
  - {name: hello, image: kite.test/hello:1}
YAML
wait_for 60 "far6 running" running far6
FAR6=$(kc get pod far6 -o jsonpath='{.status.podIPs[1].ip}')
check "a pod on another node gets its node's IPv6 range" bash -c "[[ '$FAR6' == fd42:0:0:* ]]"
check "$dual: a pod reaches a pod on another node over IPv6" \
  contains "$(kc exec client6 -- timeout 5 wget -q -O- "http://[$FAR6]/" 2>&1)" "Server name: far6"
check "$dual: a node reaches another node's pod over IPv6" contains "$(from_node a1 "http://[$FAR6]/")" "Server name: far6"
if [ "$dual" = vxlan ]; then
  check "without an IPv6 --node-ip, a dual-stack node finds its IPv6 InternalIP, as K3s" \
    equals "$(kc get node a2 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" "${IP[a2]} ${IP6[a2]}"
  check "vxlan: IPv6 routes to other nodes' pods go over kite.1" \
    contains "$(inns s ip -6 route show proto 107)" "dev kite.1"
elif [ "$dual" = wireguard-native ]; then
  check "wireguard: IPv6 routes to other nodes' pods go over kite-wg" \
    contains "$(inns s ip -6 route show proto 107)" "dev kite-wg"
  check "wireguard: a peer's allowed IPs hold its IPv6 range" \
    contains "$(machine_wg s show kite-wg allowed-ips)" "$(kc get node a2 -o jsonpath='{.spec.podCIDRs[1]}')"
else
  check "host-gw: the nodes have both InternalIPs" \
    equals "$(kc get node a2 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" "${IP[a2]} ${IP6[a2]}"
  check "host-gw: IPv6 routes to other nodes' pods go via their IPv6 InternalIPs" \
    contains "$(inns s ip -6 route show proto 107)" "via ${IP6[a2]}"
  cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: duo-np}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {app: duo}
  ports: [{port: 80, nodePort: 30096}]
YAML
  check "a pod's hostIPs are its node's two InternalIPs" \
    equals "$(kc get pod far6 -o jsonpath='{.status.hostIPs[*].ip}')" "${IP[a2]} ${IP6[a2]}"
  # The downward API gives both families: a hostNetwork pod's are its node's two.
  for hn in true false; do
    cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: env-$hn}
spec:
  hostNetwork: $hn
  nodeName: a2
  restartPolicy: Never
  containers:
  - name: c
    image: kite.test/shell:1
    command: [sh, -c, 'echo "\$HOST_IPS|\$POD_IPS|\$POD_IP" > /dev/termination-log']
    env:
    - {name: HOST_IPS, valueFrom: {fieldRef: {fieldPath: status.hostIPs}}}
    - {name: POD_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
YAML
  done
  finished() { [ "$(kc get pod "$1" -o jsonpath='{.status.phase}')" = Succeeded ]; }
  wait_for 30 "the env pods" finished env-true && wait_for 30 "the env pods" finished env-false
  said() { kc get pod "$1" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}'; }
  check "downward API: a hostNetwork pod's hostIPs, podIPs and podIP are its node's" \
    equals "$(said env-true)" "${IP[a2]},${IP6[a2]}|${IP[a2]},${IP6[a2]}|${IP[a2]}"
  pips=$(kc get pod env-false -o jsonpath='{.status.podIPs[*].ip}')
  check "downward API: a pod's podIPs are both its addresses, IPv4 first" \
    equals "$(said env-false)" "${IP[a2]},${IP6[a2]}|${pips/ /,}|${pips%% *}"
  kc delete pod env-true env-false --wait=false >/dev/null
  np6() { from_node a1 "http://[${IP6[s]}]:30096/" | grep -q "Server name: "; }
  check "a NodePort answers on a node's IPv6 address" wait_for 10 "the IPv6 node port" np6
  kc delete svc duo-np >/dev/null
fi
DUO_IPS=$(kc get svc duo -o jsonpath='{.spec.clusterIPs[*]}')
check "its IPv6 cluster IP is from the IPv6 service range" \
  bash -c "[[ '$DUO_IPS' =~ ^10\.43\.[0-9.]+\ fd43::[0-9a-f]+$ ]]"
check "a Service with no policy stays IPv4, SingleStack" \
  equals "$(kc get svc four -o jsonpath='{.spec.ipFamilyPolicy} {.spec.ipFamilies[*]} {.spec.clusterIPs[*]}')" \
  "SingleStack IPv4 $(kc get svc four -o jsonpath='{.spec.clusterIP}')"
SIX=$(kc get svc six -o jsonpath='{.spec.clusterIP}')
check "ipFamilies [IPv6] gets an IPv6 cluster IP alone" \
  equals "$(kc get svc six -o jsonpath='{.spec.ipFamilies[*]} {.spec.clusterIPs[*]}')" "IPv6 $SIX"
slice6() { kc get endpointslices -l kubernetes.io/service-name=duo \
  -o jsonpath='{range .items[?(@.addressType=="IPv6")]}{.endpoints[*].addresses[*]}{end}'; }
has_v6() { [ "$(slice6 | wc -w)" = 3 ]; }
check "the Service's IPv6 EndpointSlice lists its pods' IPv6 addresses" wait_for 10 "an IPv6 slice" has_v6
check "and its IPv4 slice their IPv4 ones" equals "$(kc get endpointslices -l kubernetes.io/service-name=duo \
  -o jsonpath='{range .items[?(@.addressType=="IPv4")]}{.endpoints[*].addresses[*]}{end}' | wc -w)" 3
check "the IPv6-only Service has an IPv6 slice alone" equals "$(kc get endpointslices -l kubernetes.io/service-name=six \
  -o jsonpath='{.items[*].addressType}')" "IPv6"
DUO6=${DUO_IPS#* }
# (Each node's proxy programs a Service on its own time: retried, bounded.)
via_pod() { kc exec client6 -- timeout 3 wget -q -O- "$1" 2>/dev/null | grep -q "Server name: "; }
via_node() { from_node s "$1" 2>/dev/null | grep -q "Server name: "; }
check "a pod reaches the Service's IPv6 cluster IP" wait_for 15 "the IPv6 cluster IP" via_pod "http://[$DUO6]/"
check "the node reaches it too" wait_for 15 "the IPv6 cluster IP" via_node "http://[$DUO6]/"
check "the IPv6-only Service answers on its port" wait_for 15 "the IPv6-only Service" via_pod "http://[$SIX]:8080/"
check "a port the IPv6 cluster IP does not define is refused at once" \
  contains "$(kc exec client6 -- timeout 5 wget -q -O- "http://[$DUO6]:81/" 2>&1)" "refused"
DNS6() { inns s timeout 10 python3 "$ROOT/tests/e2e/dnsq.py" ask 10.43.0.10 "$@" 2>&1; }
check "AAAA: a dual-stack Service's name is its IPv6 cluster IP" \
  equals "$(DNS6 duo.default.svc.cluster.local AAAA | awk '$1 == "answer" {print $4, $5}')" "AAAA $DUO6"
check "and A its IPv4 one" \
  equals "$(DNS6 duo.default.svc.cluster.local A | awk '$1 == "answer" {print $4, $5}')" "A ${DUO_IPS%% *}"
check "an IPv6-only Service has no A record (NODATA)" \
  equals "$(DNS6 six.default.svc.cluster.local A | head -1 | cut -d' ' -f1):$(DNS6 six.default.svc.cluster.local A | grep -c '^answer')" "rcode=NOERROR:0"
check "a pod resolves the Service's AAAA record (busybox nslookup)" \
  contains "$(kc exec client6 -- nslookup -type=AAAA duo.default.svc.cluster.local 2>&1)" "$DUO6"
rev=$(python3 -c "import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]).reverse_pointer)" "$DUO6")
check "PTR of the IPv6 cluster IP names the Service" \
  contains "$(DNS6 "$rev" PTR)" "PTR duo.default.svc.cluster.local."
cat <<YAML | kc apply -f - >/dev/null
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: duo-only-from-client6}
spec:
  podSelector: {matchLabels: {app: duo}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client6}}}]}]
YAML
OTHER=$(kc get pods -l app=duo -o jsonpath='{.items[1].metadata.name}')
denied6() { ! kc exec "$OTHER" -- timeout 3 wget -q -O- "http://[$V6]/" >/dev/null 2>&1; }
check "a NetworkPolicy holds for IPv6 traffic: another pod is turned away" wait_for 10 "the policy" denied6
denied4() { ! kc exec "$OTHER" -- timeout 3 wget -q -O- "http://${ips%% *}/" >/dev/null 2>&1; }
check "over IPv4 too" denied4
check "and the pod it allows comes in over IPv6" \
  contains "$(kc exec client6 -- timeout 5 wget -q -O- "http://[$V6]/" 2>&1)" "Server name: $DUO"
kc delete networkpolicy duo-only-from-client6 >/dev/null
FOUR=$(kc get svc four -o jsonpath='{.spec.clusterIP}')
out=$(kc patch svc four -p '{"spec":{"ipFamilyPolicy":"RequireDualStack"}}' -o jsonpath='{.spec.clusterIPs[*]}' 2>&1)
check "RequireDualStack on an IPv4 Service adds an IPv6 cluster IP, keeping the IPv4 one" \
  bash -c "[ '${out%% *}' = '$FOUR' ] && [[ '${out#* }' == fd43:* ]]"
out=$(kc patch svc four -p '{"spec":{"ipFamilyPolicy":"SingleStack"}}' -o jsonpath='{.spec.ipFamilies[*]} {.spec.clusterIPs[*]}' 2>&1)
check "SingleStack again releases it" equals "$out" "IPv4 $FOUR"
fails_with_out=$(kc create -f - 2>&1 <<YAML
apiVersion: v1
kind: Service
metadata: {name: bad6}
spec:
  clusterIPs: [fd44::5]
  clusterIP: fd44::5
  ports: [{port: 80}]
YAML
)
check "an IPv6 cluster IP outside the range is refused, naming the range" contains "$fails_with_out" "The range of valid IPs is fd43::/112"
[ -z "${MN_HOLD:-}" ] || sleep "$MN_HOLD"
if [ "$dual" = host-gw ]; then
  # kite-killall.sh takes kite's routes with it, host-gw's on the node's own link too.
  node_down a1; node_clean a1
  check "kite-killall.sh removes kite's routes of both families" \
    equals "$(inns a1 ip route show proto 107)$(inns a1 ip -6 route show proto 107)" ""
fi
kc delete deploy duo --wait=false >/dev/null
kc delete svc duo six four >/dev/null
kc delete pod client6 far6 --wait=false >/dev/null
done

if [ "$FAIL" -gt 0 ]; then
  for n in "${NODES[@]}"; do
    echo "--- $n log (last 25 lines) ---"
    tail -25 "$WORK/$n/"*.log 2>/dev/null | cut -c1-400
  done
  echo "--- pods ---"
  kc get pods -o wide 2>&1 | head -20
  kc get events -A 2>&1 | tail -20 | cut -c1-300
fi
summary
