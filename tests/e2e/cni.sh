#!/usr/bin/env bash
# End-to-end: CNI delegation (issue 4). With a network configuration in --cni-conf-dir,
# pods get their network from the CNI plugins (Debian's containernetworking-plugins:
# bridge + host-local, in /usr/lib/cni) instead of kite0: ADD at start, CHECK when a
# restarted kite adopts the pod, DEL when it goes. As root; run after the kubelet tier,
# never beside it (both make a node on this host). Everything it makes is named kite*
# (the bridge kitecni0) or lives in its own work dir, and is removed on exit.
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL"
[ "$(id -u)" = 0 ] || { echo "the CNI tier needs root"; exit 1; }
[ -x /usr/lib/cni/bridge ] || { echo "the CNI plugins are missing: apt-get install containernetworking-plugins"; exit 1; }
if ip link show kite0 >/dev/null 2>&1 || ip link show kitecni0 >/dev/null 2>&1; then
  echo "a kite node already runs on this host: stop it (kite-killall.sh) first"
  exit 1
fi
WITH_AGENT=1
DATA="$WORK/data"
CONF="$WORK/net.d"
mkdir -p "$DATA/agent/images" "$CONF" "$WORK/ipam"
python3 "$(dirname "$0")/../images/build.py" "$DATA/agent/images" >/dev/null
SUBNET_PREFIX=10.244.77
write_conf() { # file type-of-the-first-plugin
  cat >"$CONF/$1" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kitecni",
  "plugins": [
    {"type": "$2", "bridge": "kitecni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$WORK/ipam",
              "ranges": [[{"subnet": "$SUBNET_PREFIX.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
JSON
}
write_conf 10-kitecni.conflist bridge
# kite's own cleanup plus the bridge the plugin uses (named kite*, so kite-killall takes it).
AFTER_CLEANUP='ip link delete kitecni0 2>/dev/null || true'
# The bridge, made here with a MAC of its own, as an administrator pins one: a Linux bridge
# without one takes the lowest MAC of its ports, so it moves as pods come, and the bridge
# plugin's CHECK then fails for the pods plumbed before the move. The plugin uses an
# existing bridge of that name.
ip link delete kitecni0 2>/dev/null || true
ip link add kitecni0 type bridge
ip link set kitecni0 address 02:6b:69:74:65:01

start_server --cni-conf-dir "$CONF" --cni-bin-dir /usr/lib/cni || { cat "$WORK/server.log"; exit 1; }
wait_for 15 "the node to be Ready" node_ready
check "the node is Ready with a CNI network" node_ready
check "the server says it uses the CNI plugins" grep -q "pods get their network from CNI plugins" "$WORK/server.log"

apply_hello "terminationGracePeriodSeconds: 1"
wait_for 40 "both hello pods Ready" both_ready
check "both pods are Running and Ready" both_ready
pods=$(kc get pods -l app=hello -o jsonpath='{range .items[*]}{.metadata.name}={.status.podIP}{"\n"}{end}')
for pi in $pods; do
  name=${pi%=*}; ip=${pi#*=}
  check "pod $name has its IP from the CNI plugin's range" contains "$ip" "$SUBNET_PREFIX."
  check "host-local recorded $ip" test -f "$WORK/ipam/kitecni/$ip"
  check "curl from the host to $ip returns the page naming $name" \
    contains "$(curl -s --max-time 5 "http://$ip/")" "Server name: $name"
done
check "the plugin's bridge kitecni0 holds the gateway" contains "$(ip -o addr show kitecni0)" "$SUBNET_PREFIX.1/24"
check "kite's own bridge is not used" bash -c "! ip link show kite0 >/dev/null 2>&1"

# kill -9 and restart: the pods keep their addresses (CHECK passes, nothing re-plumbed).
ips_before=$(echo "$pods" | sort)
kill9_server
start_server --cni-conf-dir "$CONF" --cni-bin-dir /usr/lib/cni || { cat "$WORK/server.log"; exit 1; }
wait_for 15 "the node to be Ready again" node_ready
sleep 2
ips_after=$(kc get pods -l app=hello -o jsonpath='{range .items[*]}{.metadata.name}={.status.podIP}{"\n"}{end}' | sort)
check "after kill -9 and restart the pods keep their CNI addresses" equals "$ips_after" "$ips_before"
check "the adopted pods passed CNI CHECK" \
  test "$(grep -c "CHECK passed" "$WORK/server.log")" -ge 2 -a "$(grep -c 'failed CNI CHECK' "$WORK/server.log")" -eq 0

# A CHECK that fails (the bridge's MAC changed while kite was down) is reported, and the
# pods keep their addresses: a running pod is not given a new one, as upstream.
kill9_server
ip link set kitecni0 address 02:6b:69:74:65:02
start_server --cni-conf-dir "$CONF" --cni-bin-dir /usr/lib/cni || { cat "$WORK/server.log"; exit 1; }
wait_for 15 "the node to be Ready again" node_ready
wait_for 10 "both CHECKs to fail" bash -c "[ \$(grep -c 'failed CNI CHECK; keeping its address' '$WORK/server.log') -ge 2 ]"
check "a failed CNI CHECK is reported for each adopted pod" \
  test "$(grep -c 'failed CNI CHECK; keeping its address' "$WORK/server.log")" -ge 2
ips_after=$(kc get pods -l app=hello -o jsonpath='{range .items[*]}{.metadata.name}={.status.podIP}{"\n"}{end}' | sort)
check "after a failed CHECK the pods keep their addresses" equals "$ips_after" "$ips_before"

# A configuration naming a plugin that is not there: the pod's sandbox fails, with the
# plugin's name in the event, and the running pods are untouched.
write_conf 05-broken.conflist kite-no-such-plugin
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3600"]}]
YAML
failed_event() { kc get events --field-selector involvedObject.name=broken -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' | grep -q 'kite-no-such-plugin'; }
wait_for 20 "an event naming the missing plugin" failed_event
check "a missing plugin shows as an event naming it" failed_event
check "the event says which plugin is missing" \
  contains "$(kc get events --field-selector involvedObject.name=broken -o jsonpath='{.items[*].message}')" 'failed to find plugin "kite-no-such-plugin"'
check "the pod stays Pending" equals "$(kc get pod broken -o jsonpath='{.status.phase}')" "Pending"
rm "$CONF/05-broken.conflist"
broken_runs() { [ "$(kc get pod broken -o jsonpath='{.status.phase}')" = Running ]; }
wait_for 60 "the pod to start once the config is fixed" broken_runs
check "once the config is right again the pod starts" broken_runs
kc delete pod broken --grace-period=1 >/dev/null

# kubectl delete: CNI DEL releases the addresses.
kc delete deployment hello >/dev/null
released() { [ -z "$(ls "$WORK/ipam/kitecni" 2>/dev/null | grep "^$SUBNET_PREFIX\." || true)" ]; }
wait_for 30 "the addresses to be released" released
check "deleting the pods releases their addresses through CNI DEL" released
check "no CNI records are left in the data dir" bash -c "[ -z \"\$(ls '$DATA/agent/cni' 2>/dev/null)\" ]"

summary
