#!/usr/bin/env bash
# End-to-end: durability and history (issue 2): kill -9 and restart, compaction and 410 Gone,
# concurrent compare-and-swap writers. Uses the kubectl in $KUBECTL.
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL"

start_server --compact-interval 1 --compact-retain 5 || { cat "$WORK/server.log"; exit 1; }
kc create ns dur >/dev/null
for i in $(seq 1 20); do kc create configmap "cm$i" -n dur --from-literal=i="$i" >/dev/null; done
kc create deployment web -n dur --image=nginx:1.27 >/dev/null
# Let the controllers finish with it, so the snapshot below is not raced by their writes.
web_settled() { [ "$(kc get deploy web -n dur -o jsonpath='{.status.observedGeneration}/{.status.replicas}')" = "1/1" ]; }
wait_for 10 "the deployment controller to settle web" web_settled
# Settled means no controller writes it any more: its resourceVersion holds for 2 s
# (under load the Progressing condition can still move on after the counts are right).
web_still() {
  local a b
  a=$(kc get deploy web -n dur -o jsonpath='{.metadata.resourceVersion}')
  sleep 2
  b=$(kc get deploy web -n dur -o jsonpath='{.metadata.resourceVersion}')
  [ -n "$a" ] && [ "$a" = "$b" ]
}
wait_for 30 "web to stop changing" web_still
snapshot() { kc get cm,deploy -n dur -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion},{.metadata.uid};{end}'; }
before=$(snapshot)
first_ts=$(kc get cm cm1 -n dur -o jsonpath='{.metadata.creationTimestamp}')
ca_before=$(grep certificate-authority-data "$KUBECONFIG")
kill9_server
start_server --compact-interval 1 --compact-retain 5 || { cat "$WORK/server.log"; exit 1; }
check "objects, uids and resourceVersions survive kill -9" equals "$(snapshot)" "$before"
# Controllers start on synced caches: a restart finds web's ReplicaSet, never makes another.
sleep 1
check "a restart leaves web with its one ReplicaSet" equals "$(kc get rs -n dur -l app=web -o name | wc -l)" "1"
check "creationTimestamp survives" equals "$(kc get cm cm1 -n dur -o jsonpath='{.metadata.creationTimestamp}')" "$first_ts"
rv=$(kc get cm cm20 -n dur -o jsonpath='{.metadata.resourceVersion}')
kc create configmap after -n dur >/dev/null
check "revisions keep increasing after restart" test "$(kc get cm after -n dur -o jsonpath='{.metadata.resourceVersion}')" -gt "$rv"
check "the cluster CA is reused after restart" equals "$(grep certificate-authority-data "$KUBECONFIG")" "$ca_before"
# The restarted server holds its controller lease again at once (same holder identity).
kc create deployment after-restart -n dur --image=busybox >/dev/null
wait_for 5 "a ReplicaSet from the restarted controller manager" bash -c "$KUBECTL get rs -n dur -l app=after-restart -o name | grep -q ."
check "controllers act within seconds of a kill -9 restart" contains "$(kc get rs -n dur -l app=after-restart -o name)" "replicaset.apps/after-restart-"

# Watch from a resourceVersion older than compaction: ERROR 410 Expired.
for i in $(seq 1 10); do kc annotate cm cm1 -n dur "n=$i" --overwrite >/dev/null; done
sleep 2.5
gone=$(kcurl "https://127.0.0.1:$PORT/api/v1/namespaces/dur/configmaps?watch=1&resourceVersion=2&timeoutSeconds=2")
check "watch from a compacted resourceVersion gets 410 Expired" contains "$gone" '"code":410'
check "the 410 says too old resource version" contains "$gone" "too old resource version"
# A watch from a current version still works after compaction, and kubectl -w keeps going.
"$KUBECTL" get cm -n dur -w --output-watch-events >"$WORK/watch.out" 2>&1 &
WPID=$!
sleep 1
kc create configmap late -n dur >/dev/null
wait_for 10 "watch event after compaction" grep -q "late" "$WORK/watch.out"
kill $WPID 2>/dev/null; wait $WPID 2>/dev/null
check "kubectl get -w works across compaction" grep -qE "ADDED +late" "$WORK/watch.out"
check "a list with a stale continue token is 410" contains "$(kcurl "https://127.0.0.1:$PORT/api/v1/configmaps?limit=1&continue=$(printf '{"rv":1,"start":"/registry/core/configmaps/"}' | base64 -w0 | tr '+/' '-_' | tr -d '=')")" '"code":410'

# Concurrent writers: exactly one success per revision, everyone else 409.
kcurl -o /dev/null "https://127.0.0.1:$PORT/version"
check "32 concurrent writers: one success per revision, 31 conflicts" \
  python3 "$(dirname "$0")/concurrent_writers.py" "https://127.0.0.1:$PORT" \
  "$WORK/certs/ca.crt" "$WORK/certs/client.crt" "$WORK/certs/client.key" dur 5

summary
