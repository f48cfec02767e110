#!/usr/bin/env bash
# (busybox's `wget -T` crashes in this image; `timeout` bounds it instead.)
# End-to-end: Services answer (issue 17): the service proxy's nftables datapath for
# ClusterIP, NodePort on 127.0.0.1 (the node's address in tests), the spread over
# endpoints, session affinity, no-endpoint and unknown-port rejects, pod-to-Service and
# hairpin traffic, kube-proxy's health endpoint, and from a client outside the node (a
# network namespace of the test's own) externalTrafficPolicy Local keeping its address,
# externalIPs and loadBalancerSourceRanges; the cluster DNS (kite-dns): every
# record kind from the host and from pods, names outside the cluster forwarded to a
# resolver the test serves on loopback (127.0.0.153:53), and the book's flow by name;
# ServiceLB; NetworkPolicy (kite-netpol) in namespaces of its own. As root, with a node; touches only
# loopback, the node's own pods and the kite* tables and interfaces it makes, all removed
# on exit. Run after the other node tiers (the bridge is per host).
source "$(dirname "$0")/../lib.sh"
node_tier services
# The host as it was, to compare after kite-killall.sh.
host_state() { nft list ruleset; echo "## routes"; ip route; echo "## links"; ip -o link show | awk '{print $2}'; }
host_state >"$WORK/host.before" 2>&1
# The "outside" resolver: answers *.example.test, NXDOMAIN for the rest.
DNSQ="$(dirname "$0")/dnsq.py"
python3 "$DNSQ" serve 127.0.0.153:53 "$WORK/upstream.count" 2>"$WORK/upstream.log" &
UPSTREAM_PID=$!
AFTER_CLEANUP="kill $UPSTREAM_PID 2>/dev/null"
printf 'nameserver 127.0.0.153\n' >"$WORK/resolv.conf"
start_server --resolv-conf "$WORK/resolv.conf" || { cat "$WORK/server.log"; exit 1; }
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
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30007}]
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
metadata: {name: api-client}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/tls:1, command: [sleep, "3600"]}
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
check "the API server's service proxy reaches the Service's pods" \
  contains "$(kc get --raw /api/v1/namespaces/default/services/web:http/proxy/)" "Server name"
check "a pod reaches itself through its own Service (hairpin)" \
  contains "$(kc exec self -- timeout 3 wget -qO- "http://$(kc get svc self -o jsonpath='{.spec.clusterIP}'):8080/")" "Server name: self"
check "a pod reaches the API server through the kubernetes Service" \
  contains "$(kc exec client -- sh -c "echo | nc -w 3 $(kc get svc kubernetes -o jsonpath='{.spec.clusterIP}') 443 >/dev/null && echo connected")" connected
# A pod reads the API the way in-cluster clients do: https://kubernetes.default.svc, the
# server's certificate checked against the pod's ca.crt and the name, its token as the
# bearer (a SelfSubjectReview says who it is). The client is OpenSSL 3 (kite.test/tls:1):
# busybox 1.35's own TLS sends no signature_algorithms, so a TLS 1.2 server must sign with
# SHA-1, which rustls (kite) and OpenSSL 3 both refuse.
whoami_in_pod() {
  kc exec api-client -- sh -c '
    sa=/var/run/secrets/kubernetes.io/serviceaccount
    body="{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}"
    printf "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s" "$(cat $sa/token)" "${#body}" "$body" |
      timeout 10 openssl s_client -quiet -connect kubernetes.default.svc:443 -servername kubernetes.default.svc \
        -CAfile $sa/ca.crt -verify_return_error -verify_hostname kubernetes.default.svc 2>&1'
}
wait_for 60 "the api-client pod to run" bash -c "[ \"\$($KUBECTL get pod api-client -o jsonpath='{.status.phase}')\" = Running ]"
check "a pod reads the API at https://kubernetes.default.svc with its token, the certificate verified" \
  contains "$(whoami_in_pod)" '"username":"system:serviceaccount:default:default"'
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

# Cluster DNS, asked from the host at the kube-dns Service's address.
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: hosty}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: hosty, labels: {app: hosty}}
spec:
  hostname: web-0
  subdomain: nginx
  containers:
  - {name: hello, image: kite.test/hello:1}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.example.test
YAML
DNS=$(kc get svc -n kube-system kube-dns -o jsonpath='{.spec.clusterIP}')
check "the kube-dns Service is at --cluster-dns" equals "$DNS" 10.43.0.10
check "kubectl cluster-info shows the DNS line" contains "$(kc cluster-info)" "kube-dns:dns/proxy"
q() { timeout 10 python3 "$DNSQ" ask "$DNS" "$@" 2>&1; }
check "A: a Service's name is its ClusterIP, TTL 5, authoritative" \
  equals "$(q web.default.svc.cluster.local)" "rcode=NOERROR aa=1 tc=0
answer web.default.svc.cluster.local. 5 A $CIP"
check "over TCP too" contains "$(q web.default.svc.cluster.local A --tcp)" "A $CIP"
WEB_IPS=$(kc get pods -l app=web -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' | sort | tr '\n' ' ')
hl() { q web-headless.default.svc.cluster.local | awk '$1 == "answer" {print $5}' | sort | tr '\n' ' '; }
hl_ok() { [ "$(hl)" = "$WEB_IPS" ]; }
wait_for 10 "the headless Service's records" hl_ok
check "A: a headless Service's name is its ready pods' IPs" equals "$(hl)" "$WEB_IPS"
wait_for 30 "hosty to run" bash -c "[ \"\$($KUBECTL get pod hosty -o jsonpath='{.status.phase}')\" = Running ]"
HIP=$(kc get pod hosty -o jsonpath='{.status.podIP}')
hosty() { q web-0.nginx.default.svc.cluster.local | grep -q "A $HIP"; }
wait_for 10 "web-0.nginx to resolve" hosty
check "A: hostname + subdomain (web-0.nginx.default.svc.cluster.local)" hosty
check "SRV: a named port of a ClusterIP Service" \
  contains "$(q _http._tcp.web.default.svc.cluster.local SRV)" "SRV 0 100 80 web.default.svc.cluster.local."
check "SRV of a headless Service: one per pod, by hostname" \
  contains "$(q _http._tcp.nginx.default.svc.cluster.local SRV)" "SRV 0 100 80 web-0.nginx.default.svc.cluster.local."
check "CNAME: an ExternalName Service" contains "$(q ext.default.svc.cluster.local)" "CNAME www.example.test."
check "A: a pod's dashed address (pods insecure)" contains "$(q 10-42-0-99.default.pod.cluster.local)" "A 10.42.0.99"
REV=$(awk -F. '{print $4"."$3"."$2"."$1}' <<<"$CIP")
check "PTR: a Service's address" contains "$(q "$REV.in-addr.arpa" PTR)" "PTR web.default.svc.cluster.local."
HREV=$(awk -F. '{print $4"."$3"."$2"."$1}' <<<"$HIP")
check "PTR: a pod's address, by its endpoint name" contains "$(q "$HREV.in-addr.arpa" PTR)" "PTR web-0.nginx.default.svc.cluster.local."
check "NXDOMAIN for a Service that does not exist, with the zone's SOA" \
  equals "$(q nope.default.svc.cluster.local)" "rcode=NXDOMAIN aa=1 tc=0
$(q nope.default.svc.cluster.local | grep '^authority cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. [0-9]* 7200 1800 86400 5$')"
check "NODATA (NOERROR, no answer, SOA) for a type the name lacks" \
  bash -c "grep -q '^rcode=NOERROR' <<<\"\$1\" && ! grep -q '^answer' <<<\"\$1\" && grep -q 'authority cluster.local. 5 SOA' <<<\"\$1\"" _ "$(q web.default.svc.cluster.local AAAA)"
check "NODATA for a namespace's own name, NXDOMAIN for a missing one" \
  bash -c "grep -q NOERROR <<<\"\$1\" && grep -q NXDOMAIN <<<\"\$2\"" _ "$(q default.svc.cluster.local)" "$(q nowhere.svc.cluster.local)"
check "TXT dns-version.cluster.local says the schema version" contains "$(q dns-version.cluster.local TXT)" '"1.1.0"'
check "a name outside the cluster is forwarded to the host's resolver" \
  contains "$(q www.example.test A --rd)" "answer www.example.test. 30 A 192.0.2.7"
before=$(cat "$WORK/upstream.count")
q www.example.test A --rd >/dev/null
check "and cached (the resolver was not asked again)" equals "$(cat "$WORK/upstream.count")" "$before"
check "its NXDOMAIN comes back as the resolver gave it" contains "$(q missing.test A --rd)" "rcode=NXDOMAIN aa=0"

# From a pod, through its resolv.conf (search path, ndots:5).
check "a pod resolves a Service by its short name" contains "$(kc exec client -- nslookup web 2>&1)" "Address: $CIP"
check "a pod fetches http://web (the name, not the address)" contains "$(kc exec client -- timeout 5 wget -qO- http://web/)" "Server name"
check "a pod resolves kubernetes.default.svc.cluster.local" contains "$(kc exec client -- nslookup kubernetes.default.svc.cluster.local 2>&1)" "Address: $KIP"
check "a pod fetches http://web.default (the search path)" contains "$(kc exec client -- timeout 5 wget -qO- http://web.default/)" "Server name"
check "a pod's SRV query" contains "$(kc exec client -- nslookup -type=SRV _http._tcp.web.default.svc.cluster.local 2>&1)" "0 100 80 web.default.svc.cluster.local"
check "a pod's reverse lookup" contains "$(kc exec client -- nslookup "$CIP" 2>&1)" "name = web.default.svc.cluster.local"
check "a pod resolves a name outside the cluster" contains "$(kc exec client -- nslookup www.example.test 2>&1)" "Address: 192.0.2.7"

# ServiceLB: a LoadBalancer Service gets the node's address and answers on it.
kc expose deployment web --name web-lb --type=LoadBalancer --port 80 --target-port 80 >/dev/null
lb_ip() { kc get svc "$1" -o jsonpath='{.status.loadBalancer.ingress[*].ip}'; }
has_lb() { [ -n "$(lb_ip web-lb)" ]; }
wait_for 20 "web-lb to get an EXTERNAL-IP" has_lb
check "kubectl expose --type=LoadBalancer: EXTERNAL-IP is the node's address" \
  equals "$(kc get svc web-lb --no-headers | awk '{print $4}')" "$NODE_IP"
wait_for 10 "the load balancer to answer" serves "http://$NODE_IP:80/"
check "and it answers there on the Service's port" serves "http://$NODE_IP:80/"
kc expose deployment web --name web-lb2 --type=LoadBalancer --port 80 --target-port 80 >/dev/null
events_of() { kc get events --field-selector "involvedObject.name=$1" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}'; }
wait_for 10 "web-lb2's event" bash -c "$KUBECTL get events --field-selector involvedObject.name=web-lb2 | grep -q SyncLoadBalancerFailed"
check "a second LoadBalancer on the same port stays Pending" \
  equals "$(kc get svc web-lb2 --no-headers | awk '{print $4}')" "<pending>"
check "with an event naming the Service that has the port" \
  contains "$(events_of web-lb2)" "port 80/TCP is already used by LoadBalancer Service default/web-lb"
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: web-metallb}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/metallb
  selector: {app: web}
  ports: [{port: 8088, targetPort: 80}]
YAML
kc delete svc web-lb >/dev/null
wait_for 20 "web-lb2 to take the freed port" bash -c "[ -n \"\$($KUBECTL get svc web-lb2 -o jsonpath='{.status.loadBalancer.ingress[*].ip}')\" ]"
check "once the port is free, the waiting Service gets it" equals "$(lb_ip web-lb2)" "$NODE_IP"
check "a Service of another loadBalancerClass is left alone" equals "$(lb_ip web-metallb)" ""
kc delete svc web-lb2 web-metallb >/dev/null

# From outside the node: a client in a network namespace of the test's own (kite-svc-x,
# joined to the host by a veth pair, 172.31.250.0/29), as a machine on the node's network.
# The external and load-balancer addresses the test gives Services (.5, .6) are in that
# subnet too, so nothing sent to them, DNATed or not, leaves the host and the namespace.
XNS=kite-svc-x
XIP=172.31.250.2
ip netns add $XNS
AFTER_CLEANUP="$AFTER_CLEANUP; ip netns del $XNS 2>/dev/null; ip link del kite-svcx0 2>/dev/null"
ip link add kite-svcx0 type veth peer name kite-svcx1 netns $XNS
ip addr add 172.31.250.1/29 dev kite-svcx0
ip link set kite-svcx0 up
ip -n $XNS addr add $XIP/29 dev kite-svcx1
ip -n $XNS link set kite-svcx1 up
ip -n $XNS link set lo up
ip -n $XNS route add default via 172.31.250.1
ip -n $XNS route add 172.31.250.5/32 via 172.31.250.1
ip -n $XNS route add 172.31.250.6/32 via 172.31.250.1
xcurl() { ip netns exec $XNS curl -s --max-time 3 "$1"; }
xserves() { xcurl "$1" | grep -q 'Server name'; }
# The address the answering pod's server saw for one request from the client namespace
# (busybox httpd -v logs "[::ffff:address]:port: response:200" per request).
seen_by_pod() {
  declare -A before
  local p pod n
  for p in $(kc get pods -l app=web -o name); do before[$p]=$(kc logs "$p" | wc -l); done
  pod=$(xcurl "$1" | sed -n 's/.*Server name: *\([^< ]*\).*/\1/p')
  [ -n "$pod" ] || return 1
  for _ in $(seq 40); do
    n=$(kc logs "pod/$pod" | wc -l)
    if [ "$n" -gt "${before[pod/$pod]:-0}" ]; then
      kc logs "pod/$pod" | tail -1 | sed -E 's/^\[?(::ffff:)?([0-9.]+).*/\2/'
      return 0
    fi
    sleep 0.25
  done
  return 1
}
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  externalIPs: [172.31.250.5]
  ports: [{port: 80, targetPort: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-guarded}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/test
  selector: {app: web}
  loadBalancerSourceRanges: [$XIP/32]
  ports: [{port: 8081, targetPort: 80}]
YAML
wait_for 10 "the Local NodePort to answer the client namespace" xserves "http://172.31.250.1:30080/"
check "externalTrafficPolicy Local: the pod sees the outside client's own address" \
  equals "$(seen_by_pod "http://172.31.250.1:30080/")" "$XIP"
seen=$(seen_by_pod "http://172.31.250.1:30007/")
check "externalTrafficPolicy Cluster: the outside client is masqueraded ($seen)" \
  bash -c '[ -n "$1" ] && [ "$1" != "$2" ]' _ "$seen" "$XIP"
check "externalIPs: the client reaches the Service at its external IP (172.31.250.5:80)" xserves "http://172.31.250.5/"
check "and, Local, with its own address seen" equals "$(seen_by_pod "http://172.31.250.5/")" "$XIP"
# The node's own address is loopback in this tier: the guarded load balancer's address is
# one the client namespace routes to the host, set as another load balancer would set it.
kc patch svc web-guarded --subresource=status --type merge \
  -p '{"status":{"loadBalancer":{"ingress":[{"ip":"172.31.250.6"}]}}}' >/dev/null
wait_for 10 "the guarded load balancer to answer the allowed client" xserves "http://172.31.250.6:8081/"
check "loadBalancerSourceRanges: a client in the ranges reaches the load balancer" xserves "http://172.31.250.6:8081/"
check "a client outside them (the node itself) does not" bash -c "! curl -s --max-time 3 http://172.31.250.6:8081/ >/dev/null"
kc patch svc web-guarded --type merge -p '{"spec":{"loadBalancerSourceRanges":["10.99.0.0/16"]}}' >/dev/null
gone_for_x() { ! xserves "http://172.31.250.6:8081/"; }
wait_for 10 "the narrowed ranges to apply" gone_for_x
check "narrowed ranges shut the client out" gone_for_x
check "while the node port (not guarded, as upstream) still answers it" \
  xserves "http://172.31.250.1:$(kc get svc web-guarded -o jsonpath='{.spec.ports[0].nodePort}')/"
kc delete svc web-local web-guarded >/dev/null
ip netns del $XNS
ip link del kite-svcx0 2>/dev/null || true

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

# The book's flow: a Deployment and a NodePort Service on 30007 in their own namespace.
kc create namespace gitops-kubernetes >/dev/null
cat <<YAML | kc apply -n gitops-kubernetes -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello-world}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello-world}}
  template:
    metadata: {labels: {app: hello-world}}
    spec:
      containers:
      - {name: hello, image: kite.test/hello:1, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: hello-world-service}
spec:
  type: NodePort
  selector: {app: hello-world}
  ports: [{port: 80, targetPort: 80, nodePort: 30007}]
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/shell:1, command: [sleep, "3600"]}
YAML
book_ready() { [ "$(kc get deploy -n gitops-kubernetes hello-world -o jsonpath='{.status.readyReplicas}')" = 2 ]; }
wait_for 60 "the book's Deployment to be Ready" book_ready
wait_for 20 "curl http://127.0.0.1:30007 to answer" serves "http://127.0.0.1:30007/"
check "book: curl http://127.0.0.1:30007 returns the page" serves "http://127.0.0.1:30007/"
check "book: and http://<node-ip>:30007" serves "http://$NODE_IP:30007/"
PF=$(free_port)
"$KUBECTL" port-forward -n gitops-kubernetes service/hello-world-service "$PF:80" >"$WORK/pf.log" 2>&1 &
PF_PID=$!
wait_for 10 "port-forward to listen" serves "http://127.0.0.1:$PF/"
check "book: kubectl port-forward service/hello-world-service answers" serves "http://127.0.0.1:$PF/"
kill $PF_PID 2>/dev/null
wait_for 30 "the reader pod to run" bash -c "[ \"\$($KUBECTL get pod -n gitops-kubernetes reader -o jsonpath='{.status.phase}')\" = Running ]"
for name in hello-world-service hello-world-service.gitops-kubernetes hello-world-service.gitops-kubernetes.svc.cluster.local; do
  check "book: from a pod, wget http://$name" \
    contains "$(kc exec -n gitops-kubernetes reader -- timeout 5 wget -qO- "http://$name/")" "Server name"
done
check "book: from another namespace, the short name does not resolve" \
  bash -c "! $KUBECTL exec client -- timeout 5 wget -qO- http://hello-world-service/ >/dev/null 2>&1"

# NetworkPolicy: default deny, an allow by namespace, egress to DNS and one Service only.
for n in np-server np-client np-other; do kc create namespace $n >/dev/null; done
kc label namespace np-client team=friends >/dev/null
kc run srv -n np-server --image kite.test/hello:1 --labels app=srv --port 80 --expose >/dev/null
kc run cli -n np-client --image kite.test/shell:1 --command -- sleep 3600 >/dev/null
kc run other -n np-other --image kite.test/shell:1 --command -- sleep 3600 >/dev/null
np_running() { [ "$(for p in np-server/srv np-client/cli np-other/other; do kc get pod -n "${p%/*}" "${p#*/}" -o jsonpath='{.status.phase} '; done)" = "Running Running Running " ]; }
wait_for 60 "the policy pods to run" np_running
from() { kc exec -n "$1" "$2" -- timeout 5 wget -qO- "$3" 2>/dev/null | grep -q "Server name"; }
wait_for 20 "srv to answer cli" from np-client cli http://srv.np-server/
check "policy: before any policy, cli reaches srv" from np-client cli http://srv.np-server/
# A connection opened before the policy keeps flowing; its request goes after.
"$KUBECTL" exec -n np-client cli -- sh -c '(sleep 4; printf "GET / HTTP/1.0\r\n\r\n") | nc srv.np-server 80' >"$WORK/held.out" 2>&1 &
HELD=$!
sleep 1
cat <<YAML | kc apply -n np-server -f - >/dev/null
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny}
spec:
  podSelector: {}
  policyTypes: [Ingress]
YAML
denied() { ! from "$@"; }
wait_for 10 "the default deny to hold" denied np-client cli http://srv.np-server/
check "policy: default deny in np-server: cli (another namespace) is refused" denied np-client cli http://srv.np-server/
check "and so is other" denied np-other other http://srv.np-server/
wait $HELD
check "a connection established before the policy keeps flowing" grep -q "Server name" "$WORK/held.out"
cat <<YAML | kc apply -n np-server -f - >/dev/null
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-friends}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: friends}}}]
    ports: [{port: 80}]
YAML
wait_for 10 "the namespace allow to hold" from np-client cli http://srv.np-server/
check "policy: allowed by namespaceSelector, cli gets through" from np-client cli http://srv.np-server/
check "and other still does not" denied np-other other http://srv.np-server/
cat <<YAML | kc apply -n np-client -f - >/dev/null
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-dns-and-srv}
spec:
  podSelector: {matchLabels: {run: cli}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: np-server}}
      podSelector: {matchLabels: {app: srv}}
    ports: [{port: 80}]
YAML
wait_for 10 "the egress policy to hold" denied np-client cli http://hello-world-service.gitops-kubernetes/
check "policy: egress to another Service is refused" denied np-client cli http://hello-world-service.gitops-kubernetes/
check "while the allowed Service answers (by name: DNS is allowed)" from np-client cli http://srv.np-server/
check "the egress policy leaves other pods alone" from np-other other http://hello-world-service.gitops-kubernetes/
check "the policies are the kite-netpol nftables table" contains "$(nft list tables)" "table inet kite-netpol"
kc delete networkpolicy -n np-server --all >/dev/null
kc delete networkpolicy -n np-client --all >/dev/null
wait_for 10 "the table to go with the last policy" bash -c "! nft list tables | grep -q kite-netpol"
check "policy: with no policies left, the table is gone" bash -c "! nft list tables | grep -q kite-netpol"
check "and other reaches srv again" from np-other other http://srv.np-server/

# UDP: a client that keeps sending from one port must follow the Service to another
# endpoint once its endpoint is gone. conntrack keeps a UDP flow's NAT choice while
# packets keep coming, so the proxy deletes the flows a removed endpoint answered
# (conntrack -D). The pods run no UDP server: the flow (unreplied) is what is checked.
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: udp-flow}
spec:
  selector: {app: udp-flow}
  ports: [{port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: v1
kind: Pod
metadata: {name: udp-a, labels: {app: udp-flow}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: kite.test/shell:1, command: [sleep, "3600"]}
YAML
wait_for 60 "udp-a to run" running udp-a
UCIP=$(kc get svc udp-flow -o jsonpath='{.spec.clusterIP}')
UPORT=$(free_port)
# Bounded: 600 datagrams, one every 0.1 s, from one source port.
python3 - "$UCIP" "$UPORT" <<'PY' >/dev/null 2>&1 &
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
for _ in range(600):
    s.sendto(b"x", (sys.argv[1], 53))
    time.sleep(0.1)
PY
UDP_CLIENT=$!
AFTER_CLEANUP="$AFTER_CLEANUP; kill $UDP_CLIENT 2>/dev/null"
flow_to() { conntrack -L -p udp --orig-dst "$UCIP" --orig-port-src "$UPORT" 2>/dev/null | grep -q "src=$1 "; }
A_IP=$(kc get pod udp-a -o jsonpath='{.status.podIP}')
wait_for 10 "the UDP flow to reach udp-a" flow_to "$A_IP"
check "udp: the client's flow goes to udp-a" flow_to "$A_IP"
kc run udp-b --image kite.test/shell:1 --labels app=udp-flow --restart Never --command -- sleep 3600 >/dev/null
wait_for 60 "udp-b to run" running udp-b
B_IP=$(kc get pod udp-b -o jsonpath='{.status.podIP}')
sleep 1
check "udp: with udp-b there too, the flow stays with udp-a" flow_to "$A_IP"
kc delete pod udp-a --grace-period=0 --force >/dev/null 2>&1
wait_for 15 "the UDP flow to move to udp-b" flow_to "$B_IP"
check "udp: once udp-a is gone, the same client's flow reaches udp-b" flow_to "$B_IP"
kill "$UDP_CLIENT" 2>/dev/null

stop_server
node_cleanup
check "kite-killall.sh removes the table" bash -c "! nft list tables | grep -q kite-proxy"
host_state >"$WORK/host.after" 2>&1
check "after kite-killall.sh, nftables, routes and links are as before kite started" \
  diff "$WORK/host.before" "$WORK/host.after"
summary
