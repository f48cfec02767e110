#!/usr/bin/env bash
# (busybox's `wget -T` crashes in this image; `timeout` bounds it instead.)
# End-to-end: Services answer (issue 17): the service proxy's nftables datapath for
# ClusterIP, NodePort on 127.0.0.1 (the node's address in tests), the spread over
# endpoints, session affinity, no-endpoint and unknown-port rejects, pod-to-Service and
# hairpin traffic, and kube-proxy's health endpoint. As root, with a node; touches only
# loopback, the node's own pods and the kite* tables and interfaces it makes, all removed
# on exit. Run after the other node tiers (the bridge is per host).
source "$(dirname "$0")/../lib.sh"
node_tier services
start_server || { cat "$WORK/server.log"; exit 1; }
wait_for 20 "the node to be Ready" node_ready

cat <<YAML | kc apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: hello
        image: kite.test/hello:1
        ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30007}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/shell:1, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: self, labels: {app: self}}
spec:
  containers:
  - {name: hello, image: kite.test/hello:1}
---
apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {app: self}
  ports: [{port: 8080, targetPort: 80}]
YAML
three_ready() { [ "$(kc get deploy web -o jsonpath='{.status.readyReplicas}')" = 3 ]; }
wait_for 90 "three web replicas Ready" three_ready
wait_for 60 "the client and self pods to run" bash -c "[ \"\$($KUBECTL get pod client self -o jsonpath='{.items[*].status.phase}')\" = 'Running Running' ]"
CIP=$(kc get svc web -o jsonpath='{.spec.clusterIP}')

page() { curl -s --max-time 3 "$1"; }
serves() { page "$1" | grep -q 'Server name'; }
wait_for 20 "the ClusterIP to answer" serves "http://$CIP/"
check "the ClusterIP answers from the node" serves "http://$CIP/"
check "the NodePort answers on 127.0.0.1 (curl localhost:30007)" serves "http://127.0.0.1:30007/"
NODE_IP=$(kc get node kite-e2e -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
check "and on the node's InternalIP ($NODE_IP)" serves "http://$NODE_IP:30007/"
check "a pod reaches the Service by its ClusterIP" \
  contains "$(kc exec client -- timeout 3 wget -qO- "http://$CIP/")" "Server name"
check "a pod reaches itself through its own Service (hairpin)" \
  contains "$(kc exec self -- timeout 3 wget -qO- "http://$(kc get svc self -o jsonpath='{.spec.clusterIP}'):8080/")" "Server name: self"
check "a pod reaches the API server through the kubernetes Service" \
  contains "$(kc exec client -- sh -c "echo | nc -w 3 $(kc get svc kubernetes -o jsonpath='{.spec.clusterIP}') 443 >/dev/null && echo connected")" connected
# 300 requests spread over all three replicas.
names=$(for _ in $(seq 300); do page "http://$CIP/" | sed -n 's/.*Server name: *\([^< ]*\).*/\1/p'; done | sort | uniq -c)
check "300 requests reach all three replicas" equals "$(wc -l <<<"$names" | tr -d ' ')" 3
least=$(awk 'NR == 1 || $1 < m {m = $1} END {print m}' <<<"$names")
check "each replica gets a fair share (at least 40 of 300; got $(tr '\n' ' ' <<<"$names"))" test "${least:-0}" -ge 40
SIP=$(kc get svc sticky -o jsonpath='{.spec.clusterIP}')
wait_for 20 "the sticky Service to answer" serves "http://$SIP/"
sticky=$(for _ in $(seq 30); do page "http://$SIP/" | sed -n 's/.*Server name: *\([^< ]*\).*/\1/p'; done | sort -u | wc -l)
check "sessionAffinity ClientIP keeps one client on one pod" equals "$sticky" 1
# Service environment variables, as upstream's kubelet sets them.
kc run envs --image kite.test/shell:1 --restart=Never --command -- env >/dev/null
kc run nolinks --image kite.test/shell:1 --restart=Never --overrides='{"spec": {"enableServiceLinks": false}}' --command -- env >/dev/null
done_() { [ "$(kc get pod "$1" -o jsonpath='{.status.phase}')" = Succeeded ]; }
wait_for 60 "the env pods to finish" bash -c "[ \"\$($KUBECTL get pod envs nolinks -o jsonpath='{.items[*].status.phase}')\" = 'Succeeded Succeeded' ]"
ENVS=$(kc logs envs); NOLINKS=$(kc logs nolinks)
KIP=$(kc get svc kubernetes -o jsonpath='{.spec.clusterIP}')
check "every container gets KUBERNETES_SERVICE_HOST" contains "$ENVS" "KUBERNETES_SERVICE_HOST=$KIP"
check "and KUBERNETES_SERVICE_PORT" contains "$ENVS" "KUBERNETES_SERVICE_PORT=443"
check "and its namespace's Services' variables, Docker-link style too" contains "$ENVS" "WEB_PORT_80_TCP=tcp://$CIP:80"
check "enableServiceLinks: false keeps only the API server's" \
  bash -c "grep -q '^KUBERNETES_SERVICE_HOST=$KIP\$' <<<\"\$1\" && ! grep -q '^WEB_' <<<\"\$1\"" _ "$NOLINKS"
refused() { curl -s --max-time 3 "$1" >/dev/null 2>&1; [ $? = 7 ]; }
check "a port the ClusterIP does not define is refused at once" refused "http://$CIP:81/"
kc scale deploy web --replicas 0 >/dev/null
no_endpoints() { [ -z "$(kc get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{range .items[*].endpoints[*]}{.addresses[0]}{end}')" ]; }
wait_for 60 "web to have no endpoints" no_endpoints
sleep 1
t0=$(date +%s%N)
check "with no endpoints, a connection is refused" refused "http://$CIP/"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "within a second (${ms} ms)" test "$ms" -lt 1000
check "and the NodePort too" refused "http://127.0.0.1:30007/"
check "the proxy's /healthz answers as kube-proxy's" \
  contains "$(curl -s --max-time 3 "http://127.0.0.1:$KITE_PROXY_HEALTHZ_PORT/healthz")" '"lastUpdated"'
check "the datapath is the kite-proxy nftables table" contains "$(nft list tables)" "table ip kite-proxy"
kc delete svc web sticky self --wait=false >/dev/null
gone() { ! nft list table ip kite-proxy 2>/dev/null | grep -q 'default/web/'; }
wait_for 10 "web's rules to go" gone
check "deleting a Service removes its rules" gone
stop_server
node_cleanup
check "kite-killall.sh removes the table" bash -c "! nft list tables | grep -q kite-proxy"
summary
