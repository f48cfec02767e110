#!/usr/bin/env bash
# End-to-end: the control plane core (issue 2), driven by the real kubectl given in $KUBECTL.
# Starts its own server on a free port in a temporary data dir.
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | head -1))"

start_server || { cat "$WORK/server.log"; exit 1; }
F="$WORK/files"
mkdir -p "$F"

# --- Basics ---------------------------------------------------------------------------------
check "cluster-info names the server" contains "$(kc cluster-info 2>&1)" "is running at https://127.0.0.1:$PORT"
check "version reports v1.36 +kite" contains "$(kc version 2>&1)" "Server Version: v1.36.0+kite"
check "/healthz needs no credentials" equals "$(curl -sk "https://127.0.0.1:$PORT/healthz")" "ok"
check "no credentials gets 401" contains "$(curl -sk "https://127.0.0.1:$PORT/api/v1/namespaces")" '"code":401'
resources=$(kc api-resources 2>&1)
for r in "pods  *po " "deployments  *deploy " "services  *svc " "configmaps  *cm " "namespaces  *ns " \
         "cronjobs  *cj " "ingresses  *ing " "clusterroles " "customresourcedefinitions  *crd,crds " \
         "leases " "endpointslices " "priorityclasses  *pc " "storageclasses  *sc " "resourceclaims " \
         "flowschemas " "apiservices " "certificatesigningrequests  *csr " "runtimeclasses " \
         "poddisruptionbudgets  *pdb " "horizontalpodautoscalers  *hpa " "selfsubjectreviews "; do
  check "api-resources lists ${r%% *}" grep -qE "^$r" <<<"$resources"
done
check "api-resources has the full list (>= 60 rows)" test "$(wc -l <<<"$resources")" -ge 60
check "api-resources --namespaced=false" contains "$(kc api-resources --namespaced=false 2>&1)" "nodes"
check "explain pod.spec.containers" contains "$(kc explain pod.spec.containers 2>&1)" "List of containers belonging to the pod"
check "explain shows fields" contains "$(kc explain deployment.spec 2>&1)" "progressDeadlineSeconds"
check "system namespaces exist" contains "$(kc get ns 2>&1)" "kube-node-lease"
check "kubernetes service" contains "$(kc get svc kubernetes -o wide 2>&1)" "10.43.0.1"

# --- The apply flow -------------------------------------------------------------------------
cat >"$F/app.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: gitops-kubernetes
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        args: ["--verbose"]
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: gitops-kubernetes
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
    nodePort: 30007
YAML
sed -e 's/nginx:1.27/nginx:1.28/' -e '0,/^    app: web$/s//    app: web\n    tier: frontend/' "$F/app.yaml" >"$F/app2.yaml"
grep -v -- '--verbose' "$F/app2.yaml" >"$F/app3.yaml"
check "create namespace" contains "$(kc create namespace gitops-kubernetes 2>&1)" "namespace/gitops-kubernetes created"
out=$(kc apply -f "$F/app.yaml" 2>&1)
check "apply creates the deployment" contains "$out" "deployment.apps/web created"
check "apply creates the service" contains "$out" "service/web created"
out=$(kc apply -f "$F/app.yaml" 2>&1)
check "apply again: deployment unchanged" contains "$out" "deployment.apps/web unchanged"
check "apply again: service unchanged" contains "$out" "service/web unchanged"
rv_before=$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.metadata.resourceVersion}')
diff_out=$(kc diff -f "$F/app2.yaml" 2>&1); diff_rc=$?
check "diff exits 1 on a change" equals "$diff_rc" "1"
check "diff shows the new image" contains "$diff_out" "+        image: nginx:1.28"
check "diff shows the new label" contains "$diff_out" "+    tier: frontend"
check "diff changed nothing" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.metadata.resourceVersion}')" "$rv_before"
check "apply a change: configured" contains "$(kc apply -f "$F/app2.yaml" 2>&1)" "deployment.apps/web configured"
check "the new image is there" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.spec.template.spec.containers[0].image}')" "nginx:1.28"
check "the new label is there" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.metadata.labels.tier}')" "frontend"
check "generation bumped by the spec change" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.metadata.generation}')" "2"
kc apply -f "$F/app3.yaml" >/dev/null 2>&1
check "a field removed from the file is removed (three-way merge)" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.spec.template.spec.containers[0].args}')" ""
check "nodePort kept" equals "$(kc get svc web -n gitops-kubernetes -o jsonpath='{.spec.ports[0].nodePort}')" "30007"
check "defaults applied" equals "$(kc get deploy web -n gitops-kubernetes -o jsonpath='{.spec.strategy.rollingUpdate.maxSurge} {.spec.revisionHistoryLimit} {.spec.template.spec.dnsPolicy}')" "25% 10 ClusterFirst"

# --- get and its outputs --------------------------------------------------------------------
NS="-n gitops-kubernetes"
check "get -o yaml" contains "$(kc get deploy web $NS -o yaml)" "kind: Deployment"
check "get -o json" equals "$(kc get deploy web $NS -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["replicas"])')" "2"
wide=$(kc get deploy $NS -o wide)
check "get -o wide columns" contains "$wide" "CONTAINERS   IMAGES       SELECTOR"
check "get deploy columns" grep -qE "^NAME +READY +UP-TO-DATE +AVAILABLE +AGE" <<<"$wide"
check "get svc columns" grep -qE "^NAME +TYPE +CLUSTER-IP +EXTERNAL-IP +PORT\(S\) +AGE" <<<"$(kc get svc $NS)"
check "svc ports column" contains "$(kc get svc web $NS)" "80:30007/TCP"
check "get -o name" equals "$(kc get deploy,svc $NS -o name | tr '\n' ' ')" "deployment.apps/web service/web "
check "get -o jsonpath" equals "$(kc get svc web $NS -o jsonpath='{.spec.type}')" "NodePort"
check "get -o custom-columns" contains "$(kc get deploy $NS -o custom-columns=N:.metadata.name,R:.spec.replicas)" "web   2"
check "--show-labels" contains "$(kc get deploy $NS --show-labels)" "app=web,tier=frontend"
kc create configmap c1 $NS --from-literal=a=1 >/dev/null
kc create configmap c2 $NS --from-literal=a=1 --from-literal=b=2 >/dev/null
kc label configmap c2 $NS color=blue >/dev/null
check "-l selects by label" equals "$(kc get cm $NS -l color=blue -o name)" "configmap/c2"
check "-l set-based" equals "$(kc get cm $NS -l 'color in (blue,red)' -o name)" "configmap/c2"
check "-l not-exists" contains "$(kc get cm $NS -l '!color' -o name)" "configmap/c1"
check "--field-selector metadata.name" equals "$(kc get cm $NS --field-selector metadata.name=c1 -o name)" "configmap/c1"
check "--field-selector rejects unknown fields" fails_with "field label not supported" kc get cm $NS --field-selector spec.bogus=1
# Watches with selectors: an object that comes to match is ADDED, one that stops is DELETED,
# with the object as it was (upstream's watch cache, checked against upstream.sh); what never
# matches is never sent.
ev='{.type} {.object.metadata.name} {.object.metadata.labels.color}{"\n"}'
timeout 20 "$KUBECTL" get cm $NS -l color=green -w --output-watch-events -o jsonpath="$ev" >"$F/w-label" 2>&1 &
wl=$!
timeout 20 "$KUBECTL" get cm $NS --field-selector metadata.name=w1 -w --output-watch-events -o jsonpath="$ev" >"$F/w-field" 2>&1 &
wf=$!
sleep 2
kc create configmap w1 $NS --from-literal=a=1 >/dev/null && kc label cm w1 $NS color=green >/dev/null
kc create configmap w2 $NS --from-literal=a=1 >/dev/null && kc label cm w2 $NS color=red >/dev/null
kc label cm w1 $NS color=red --overwrite >/dev/null
kc label cm w1 $NS color=green --overwrite >/dev/null
kc patch cm w1 $NS -p '{"data":{"a":"2"}}' >/dev/null
kc delete cm w1 w2 $NS >/dev/null
for _ in $(seq 50); do grep -q "^DELETED w1 green" "$F/w-label" 2>/dev/null && grep -q "^DELETED w1" "$F/w-field" 2>/dev/null && break; sleep 0.2; done
kill "$wl" "$wf" 2>/dev/null; wait "$wl" "$wf" 2>/dev/null
check "label-selected watch: ADDED on match, DELETED when it stops" equals "$(tr '\n' ';' <"$F/w-label")" \
  "ADDED w1 green;DELETED w1 green;ADDED w1 green;MODIFIED w1 green;DELETED w1 green;"
check "field-selected watch: only its object's changes" equals "$(tr '\n' ';' <"$F/w-field")" \
  "ADDED w1 ;MODIFIED w1 green;MODIFIED w1 red;MODIFIED w1 green;MODIFIED w1 green;DELETED w1 green;"
check "configmap DATA column" grep -qE "^c2 +2 " <<<"$(kc get cm $NS)"
check "-A lists across namespaces with a NAMESPACE column" grep -qE "^gitops-kubernetes +c1 " <<<"$(kc get cm -A)"
check "get a missing object: NotFound" fails_with 'configmaps "nope" not found' kc get cm nope $NS
check "pagination with --chunk-size" equals "$(kc get cm $NS --chunk-size=1 -o name | wc -l)" "$(kc get cm $NS -o name | wc -l)"
# A list's later pages are read at the first page's revision: one consistent list, whatever
# changed in between (upstream reads etcd at the continue token's revision).
kc create ns pages >/dev/null
for i in 1 2 3 4 5; do kc create configmap "p$i" -n pages >/dev/null; done
page() { kc get --raw "/api/v1/namespaces/pages/configmaps?limit=3$1" | python3 -c '
import json, sys
l = json.load(sys.stdin)
print(l["metadata"]["resourceVersion"], l["metadata"].get("continue", "-"),
      " ".join(i["metadata"]["name"] + ("+x" if "x" in i["metadata"].get("labels", {}) else "") for i in l["items"]))'; }
read -r rv1 tok1 names1 <<<"$(page "")"
kc delete configmap p4 -n pages >/dev/null
kc create configmap p6 -n pages >/dev/null
kc label configmap p3 -n pages x=1 >/dev/null
read -r rv2 tok2 names2 <<<"$(page "&continue=$tok1")"
check "the first page" equals "$names1" "kube-root-ca.crt p1 p2"
check "the next page shows the objects as they were at the first page's revision" equals "$names2" "p3 p4 p5"
check "the next page has the first page's resourceVersion, and the list ends there" equals "$rv2 $tok2" "$rv1 -"
check "a new list sees the changes" equals "$(kc get cm -n pages -l x -o name) $(kc get cm -n pages -o name | tr '\n' ' ')" \
  "configmap/p3 configmap/kube-root-ca.crt configmap/p1 configmap/p2 configmap/p3 configmap/p5 configmap/p6 "

# --- watch ----------------------------------------------------------------------------------
kc create ns watch >/dev/null
"$KUBECTL" get cm -n watch -w --output-watch-events >"$WORK/watch.out" 2>&1 &
WPID=$!
sleep 1
kc create configmap w1 -n watch --from-literal=k=v >/dev/null
kc patch configmap w1 -n watch -p '{"data":{"k":"v2"}}' >/dev/null
kc delete configmap w1 -n watch >/dev/null
wait_for 10 "watch events" grep -q "DELETED" "$WORK/watch.out"
kill $WPID 2>/dev/null; wait $WPID 2>/dev/null
w=$(cat "$WORK/watch.out")
check "watch shows ADDED" grep -qE "^ADDED +w1 " <<<"$w"
check "watch shows MODIFIED" grep -qE "^MODIFIED +w1 " <<<"$w"
check "watch shows DELETED" grep -qE "^DELETED +w1 " <<<"$w"

# --- label, annotate, patch, replace, edit, scale, delete -----------------------------------
check "label" contains "$(kc label deploy web $NS env=prod 2>&1)" "deployment.apps/web labeled"
check "label overwrite needs --overwrite" fails_with "already has a value" kc label deploy web $NS env=dev
check "label removal" contains "$(kc label deploy web $NS env- 2>&1)" "unlabeled"
check "annotate" contains "$(kc annotate deploy web $NS note=hello 2>&1)" "annotated"
check "annotation is there" equals "$(kc get deploy web $NS -o jsonpath='{.metadata.annotations.note}')" "hello"
check "patch (strategic)" contains "$(kc patch deploy web $NS -p '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.29"}]}}}}' 2>&1)" "patched"
check "strategic patch merged by name" equals "$(kc get deploy web $NS -o jsonpath='{.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}')" "nginx:1.29 80"
check "patch --type merge" contains "$(kc patch cm c1 $NS --type merge -p '{"data":{"z":"26"}}' 2>&1)" "patched"
check "patch --type json" contains "$(kc patch cm c1 $NS --type json -p '[{"op":"remove","path":"/data/z"}]' 2>&1)" "patched"
check "json patch removed the key" equals "$(kc get cm c1 $NS -o jsonpath='{.data.z}')" ""
check "failed json patch test op" fails_with "" kc patch cm c1 $NS --type json -p '[{"op":"test","path":"/data/a","value":"nope"}]'
kc get cm c1 $NS -o yaml | sed 's/a: "1"/a: "replaced"/' >"$F/c1.yaml"
check "replace" contains "$(kc replace -f "$F/c1.yaml" 2>&1)" "configmap/c1 replaced"
check "replace with a stale resourceVersion: Conflict" fails_with "the object has been modified" kc replace -f "$F/c1.yaml"
cat >"$F/editor.sh" <<'SH'
#!/bin/sh
sed -i 's/a: replaced/a: edited/' "$1"
SH
chmod +x "$F/editor.sh"
check "edit" contains "$(EDITOR="$F/editor.sh" kc edit cm c1 $NS 2>&1)" "configmap/c1 edited"
check "edit took effect" equals "$(kc get cm c1 $NS -o jsonpath='{.data.a}')" "edited"
check "scale (scale subresource)" contains "$(kc scale deploy web $NS --replicas=5 2>&1)" "deployment.apps/web scaled"
check "scaled replicas" equals "$(kc get deploy web $NS -o jsonpath='{.spec.replicas}')" "5"
check "scale subresource reads" contains "$(kc get --raw /apis/apps/v1/namespaces/gitops-kubernetes/deployments/web/scale)" '"replicas":5'
check "create deployment" contains "$(kc create deployment d2 $NS --image=busybox:1.36 --replicas=2 2>&1)" "deployment.apps/d2 created"
check "create deployment set the selector" equals "$(kc get deploy d2 $NS -o jsonpath='{.spec.selector.matchLabels.app} {.spec.replicas}')" "d2 2"
check "create secret generic" contains "$(kc create secret generic s1 $NS --from-literal=password=hunter2 2>&1)" "secret/s1 created"
check "secret data is base64" equals "$(kc get secret s1 $NS -o jsonpath='{.data.password}' | base64 -d)" "hunter2"
check "secret columns" grep -qE "^s1 +Opaque +1 " <<<"$(kc get secret s1 $NS)"
check "create service nodeport" contains "$(kc create service nodeport np1 $NS --tcp=8080:80 2>&1)" "service/np1 created"
check "nodePort allocated in range" test "$(kc get svc np1 $NS -o jsonpath='{.spec.ports[0].nodePort}')" -ge 30000
run_out=$(kc run ngx --image=nginx:alpine --dry-run=server -o yaml $NS 2>&1)
check "run --dry-run=server returns the defaulted pod" contains "$run_out" "imagePullPolicy: IfNotPresent"
check "run --dry-run=server stored nothing" fails_with "not found" kc get pod ngx $NS
check "delete -f" contains "$(kc delete -f "$F/app3.yaml" 2>&1)" 'deployment.apps "web" deleted'
check "deleted objects are gone" fails_with "not found" kc get deploy web $NS
check "deleting the service released nodePort 30007" contains "$(kc create service nodeport again $NS --tcp=80:80 --node-port=30007 2>&1)" "created"

# --- bad input: clear errors, nothing changed -----------------------------------------------
count_cm() { kc get cm -n gitops-kubernetes -o name | wc -l; }
before=$(count_cm)
check "invalid name" fails_with "a lowercase RFC 1123 subdomain" kc create configmap Bad_Name -n gitops-kubernetes
cat >"$F/noimage.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: noimage, namespace: gitops-kubernetes}
spec:
  containers:
  - name: c
YAML
check "missing required field" fails_with "spec.containers[0].image: Required value" kc apply -f "$F/noimage.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: badtype, namespace: gitops-kubernetes}\nspec:\n  containers: "x"\n' >"$F/badtype.yaml"
# As upstream: a value of the wrong type fails decoding (400) before validation runs.
check "a value of the wrong type: BadRequest naming the field" fails_with 'cannot be handled as a Pod: spec.containers: invalid type: string "x"' kc create --validate=false -f "$F/badtype.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: badqty, namespace: gitops-kubernetes}\nspec:\n  containers:\n  - {name: c, image: busybox, resources: {limits: {memory: lots}}}\n' >"$F/badqty.yaml"
# As upstream: a quantity that does not parse fails decoding (400), and nothing is created.
check "a malformed quantity: BadRequest naming the field" fails_with "cannot be handled as a Pod: spec.containers[0].resources.limits.memory: quantities must match the regular expression" kc create --validate=false -f "$F/badqty.yaml"
check "the pod with the malformed quantity was not created" fails_with 'pods "badqty" not found' kc -n gitops-kubernetes get pod badqty
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: badenv, namespace: gitops-kubernetes}\nspec:\n  containers:\n  - {name: c, image: busybox, env: [{name: KEY=1, value: v}]}\n' >"$F/badenv.yaml"
check "an environment variable name with '=': Invalid value" fails_with "spec.containers[0].env[0].name: Invalid value: \"KEY=1\": a valid environment variable name must consist only of printable ASCII characters other than '='" kc apply -f "$F/badenv.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: badfrom, namespace: gitops-kubernetes}\nspec:\n  containers:\n  - {name: c, image: busybox, env: [{name: K, value: v, valueFrom: {configMapKeyRef: {name: a, key: k}}}]}\n' >"$F/badfrom.yaml"
check "an env var with both value and valueFrom: Invalid value" fails_with 'spec.containers[0].env[0].valueFrom: Invalid value: "": may not be specified when `value` is not empty' kc apply -f "$F/badfrom.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: badreq, namespace: gitops-kubernetes}\nspec:\n  containers:\n  - {name: c, image: busybox, resources: {limits: {cpu: 1000m}, requests: {cpu: "2"}}}\n' >"$F/badreq.yaml"
check "a request above its limit: Invalid value, in upstream's canonical form" fails_with 'spec.containers[0].resources.requests[cpu]: Invalid value: "2": must be less than or equal to cpu limit of 1' kc apply -f "$F/badreq.yaml"
printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: badids, namespace: gitops-kubernetes}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      securityContext: {runAsUser: -5, supplementalGroupsPolicy: Bogus}\n      containers: [{name: c, image: busybox}]\n' >"$F/badids.yaml"
check "a negative runAsUser: Invalid value" fails_with 'spec.template.spec.securityContext.runAsUser: Invalid value: -5: must be between 0 and 2147483647, inclusive' kc apply -f "$F/badids.yaml"
check "an unknown supplementalGroupsPolicy: Unsupported value" fails_with 'spec.template.spec.securityContext.supplementalGroupsPolicy: Unsupported value: "Bogus": supported values: "Merge", "Strict"' kc apply -f "$F/badids.yaml"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: limited, namespace: gitops-kubernetes}\nspec:\n  containers:\n  - {name: c, image: busybox, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n' | kc apply -f - >/dev/null
check "limits stand in for missing requests, and the pod is Guaranteed" \
  equals "$(kc get pod limited -n gitops-kubernetes -o jsonpath='{.spec.containers[0].resources.requests.cpu} {.spec.containers[0].resources.requests.memory} {.status.qosClass}')" "500m 64Mi Guaranteed"
kc delete pod limited -n gitops-kubernetes --wait=false >/dev/null 2>&1
cat >"$F/unknown.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: unknownfield, namespace: gitops-kubernetes}
data: {a: b}
bogusField: 1
YAML
check "unknown field (strict)" fails_with 'unknown field "bogusField"' kc apply -f "$F/unknown.yaml"
check "unknown field with --validate=warn warns" contains "$(kc apply --validate=warn -f "$F/unknown.yaml" 2>&1)" 'unknown field "bogusField"'
kc delete cm unknownfield -n gitops-kubernetes >/dev/null 2>&1
# A `kind: List` (what `kubectl get -o yaml` writes) is validated on the client side,
# against /openapi/v2 in protobuf.
printf 'apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: in-list, namespace: gitops-kubernetes}\n  data: {a: b}\n' >"$F/list.yaml"
check "apply of a kind: List creates its items" contains "$(kc apply -f "$F/list.yaml" 2>&1)" "configmap/in-list created"
check "kubectl get -o yaml output (a List) applies back" contains "$(kc get cm -n gitops-kubernetes -o yaml >"$F/back-list.yaml"; kc apply -f "$F/back-list.yaml" 2>&1)" "configmap/in-list"
printf 'apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: in-list2, namespace: gitops-kubernetes}\n  bogusField: 1\n' >"$F/badlist.yaml"
check "an unknown field in a List item is refused (client-side schema)" fails_with 'unknown field "bogusField"' kc apply -f "$F/badlist.yaml"
kc delete cm in-list -n gitops-kubernetes >/dev/null 2>&1
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   bad: [indent\n' >"$F/malformed.yaml"
check "malformed YAML" fails_with "error" kc apply -f "$F/malformed.yaml"
python3 -c "
import json
print(json.dumps({'apiVersion':'v1','kind':'ConfigMap','metadata':{'name':'huge','namespace':'gitops-kubernetes'},'data':{'k':'x'*(4*1024*1024)}}))" >"$F/huge.json"
check "oversized body" fails_with "Request entity too large" kc create -f "$F/huge.json"
cat >"$F/dupnp.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: dupnp, namespace: gitops-kubernetes}
spec:
  type: NodePort
  ports: [{port: 80, nodePort: 30007}]
YAML
check "duplicate nodePort" fails_with "provided port is already allocated" kc apply -f "$F/dupnp.yaml"
check "nodePort out of range" fails_with "not in the valid range" kc create service nodeport far -n gitops-kubernetes --tcp=80:80 --node-port=40000
check "create into a missing namespace" fails_with 'namespaces "nowhere" not found' kc create configmap x -n nowhere
check "duplicate create: AlreadyExists" fails_with 'configmaps "c1" already exists' kc create configmap c1 -n gitops-kubernetes
check "bad input changed nothing" equals "$(count_cm)" "$before"
check "the failed service was not stored" fails_with "not found" kc get svc dupnp -n gitops-kubernetes
check "system namespaces cannot be deleted" fails_with "may not be deleted" kc delete ns kube-system

# --- namespaces, finalizers, deletecollection ------------------------------------------------
kc create ns doomed >/dev/null
kc create configmap keep -n doomed >/dev/null
# A finalizer holds the namespace in Terminating while the namespace controller empties it.
kc patch cm keep -n doomed --type merge -p '{"metadata":{"finalizers":["example.com/hold"]}}' >/dev/null
kc delete ns doomed --wait=false >/dev/null 2>&1
check "a deleted namespace is Terminating" equals "$(kc get ns doomed -o jsonpath='{.status.phase}')" "Terminating"
check "no new content in a terminating namespace" fails_with 'configmaps "late" is forbidden: unable to create new content in namespace doomed because it is being terminated' kc create configmap late -n doomed
kc patch cm keep -n doomed --type json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null 2>&1
kc create configmap fin -n gitops-kubernetes >/dev/null
kc patch cm fin -n gitops-kubernetes --type merge -p '{"metadata":{"finalizers":["example.com/hold"]}}' >/dev/null
kc delete cm fin -n gitops-kubernetes --wait=false >/dev/null 2>&1
check "a finalizer holds the object with a deletionTimestamp" test -n "$(kc get cm fin -n gitops-kubernetes -o jsonpath='{.metadata.deletionTimestamp}')"
kc patch cm fin -n gitops-kubernetes --type json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null 2>&1
check "removing the last finalizer deletes it" fails_with "not found" kc get cm fin -n gitops-kubernetes
kc create ns bulk >/dev/null
for i in 1 2 3; do kc create configmap "b$i" -n bulk >/dev/null; done
kc label cm b1 b2 -n bulk group=x >/dev/null
kc delete cm -n bulk -l group=x >/dev/null
check "deletecollection by label" equals "$(kc get cm -n bulk -o name | grep -v kube-root-ca | tr '\n' ' ')" "configmap/b3 "
kc create configmap noop -n bulk --from-literal=k=v >/dev/null
rv1=$(kc get cm noop -n bulk -o jsonpath='{.metadata.resourceVersion}')
kc get cm noop -n bulk -o json | kc replace -f - >/dev/null
check "an update that changes nothing keeps the resourceVersion" equals "$(kc get cm noop -n bulk -o jsonpath='{.metadata.resourceVersion}')" "$rv1"
kc get cm noop -n bulk -o json | sed 's/"k": "v"/"k": "w"/' | kc replace -f - >/dev/null
check "an update that changes data gets a new resourceVersion" test "$(kc get cm noop -n bulk -o jsonpath='{.metadata.resourceVersion}')" != "$rv1"
check "auth can-i (SelfSubjectAccessReview)" equals "$(kc auth can-i create pods 2>&1)" "yes"
check "auth whoami (SelfSubjectReview)" contains "$(kc auth whoami 2>&1)" "system:masters"
# pods/binding (what a scheduler posts): nodeName, the binding's annotations and
# PodScheduled=True in one write; uid is a precondition; a bound pod is not bound again.
kc create ns binds >/dev/null
kc run bindme -n binds --image=busybox >/dev/null
uid=$(kc get pod bindme -n binds -o jsonpath='{.metadata.uid}')
binding() { # uid node
  echo "{\"apiVersion\":\"v1\",\"kind\":\"Binding\",\"metadata\":{\"name\":\"bindme\",\"uid\":\"$1\",\"annotations\":{\"bound-by\":\"e2e\"}},\"target\":{\"kind\":\"Node\",\"name\":\"$2\"}}" >"$WORK/binding.json"
  kc create --raw /api/v1/namespaces/binds/pods/bindme/binding -f "$WORK/binding.json"
}
check "a binding with another pod's uid is refused (409 precondition)" fails_with "Precondition failed: UID in precondition" binding 00000000-0000-0000-0000-000000000000 node-a
check "the refused binding changed nothing" equals "$(kc get pod bindme -n binds -o jsonpath='{.spec.nodeName}')" ""
check "a binding succeeds" binding "$uid" node-a
check "the binding set spec.nodeName" equals "$(kc get pod bindme -n binds -o jsonpath='{.spec.nodeName}')" "node-a"
check "the binding's annotations are the pod's" equals "$(kc get pod bindme -n binds -o jsonpath='{.metadata.annotations.bound-by}')" "e2e"
check "the binding set PodScheduled=True" equals "$(kc get pod bindme -n binds -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].status}')" "True"
check "a bound pod is not bound again (409)" fails_with 'is already assigned to node "node-a"' binding "$uid" node-b
metrics=$(kc get --raw /metrics)
check "metrics count requests" contains "$metrics" 'apiserver_request_total{code="200",resource="configmaps",verb="LIST"}'
check "metrics time store operations" contains "$metrics" 'etcd_request_duration_seconds_count{operation="create"}'
check "metrics count open watches" contains "$metrics" 'apiserver_registered_watchers '

# networking.k8s.io/v1 ServiceCIDR and IPAddress, as upstream: the default ServiceCIDR is
# the service range and Ready; an IPAddress is named by its canonical address.
check "the default ServiceCIDR is the service range" \
  equals "$(kc get servicecidr kubernetes -o jsonpath='{.spec.cidrs[0]} {.status.conditions[?(@.type=="Ready")].status}')" "10.43.0.0/16 True"
ipa() { printf '{"apiVersion":"networking.k8s.io/v1","kind":"IPAddress","metadata":{"name":"%s"},"spec":{"parentRef":{"group":"g","resource":"r","namespace":"n","name":"x"}}}' "$1"; }
check "an IPv6 IPAddress is created by its name" contains "$(ipa fe80::42:1dff:fe84:f9e2 | kc create -f - 2>&1)" "created"
check "a non-canonical IPAddress name is refused" fails_with "must be in canonical form" bash -c "printf '%s' '$(ipa 2001:db8:0::1)' | $KUBECTL create -f -"
kc delete ipaddress fe80::42:1dff:fe84:f9e2 >/dev/null 2>&1
# IP families on a single-stack (IPv4) cluster, as upstream's Service allocation.
svcj() { printf '{"apiVersion":"v1","kind":"Service","metadata":{"name":"%s"},"spec":{%s"ports":[{"port":80}]}}' "$1" "$2"; }
check "RequireDualStack is refused on a single-stack cluster, as upstream" \
  fails_with 'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services' \
  bash -c "printf '%s' '$(svcj req '"ipFamilyPolicy":"RequireDualStack",')' | $KUBECTL create -f -"
check "so is the IPv6 family" \
  fails_with 'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster' \
  bash -c "printf '%s' '$(svcj six '"ipFamilies":["IPv6"],')' | $KUBECTL create -f -"
check "an unknown policy is named with the ones there are" \
  fails_with 'Unsupported value: "Sometimes": supported values: "PreferDualStack", "RequireDualStack", "SingleStack"' \
  bash -c "printf '%s' '$(svcj odd '"ipFamilyPolicy":"Sometimes",')' | $KUBECTL create -f -"
svcj pref '"ipFamilyPolicy":"PreferDualStack",' | kc create -f - >/dev/null
check "PreferDualStack gets the one family there is" \
  equals "$(kc get svc pref -o jsonpath='{.spec.ipFamilyPolicy} {.spec.ipFamilies[*]} {.spec.clusterIPs[*]}')" \
  "PreferDualStack IPv4 $(kc get svc pref -o jsonpath='{.spec.clusterIP}')"
svcj plain '' | kc create -f - >/dev/null
check "a Service says nothing of families: SingleStack IPv4" \
  equals "$(kc get svc plain -o jsonpath='{.spec.ipFamilyPolicy} {.spec.ipFamilies[*]}')" "SingleStack IPv4"
printf '{"apiVersion":"v1","kind":"Service","metadata":{"name":"hl"},"spec":{"clusterIP":"None","ports":[{"port":80}]}}' | kc create -f - >/dev/null
check "a headless Service without a selector is RequireDualStack with both families, as upstream" \
  equals "$(kc get svc hl -o jsonpath='{.spec.ipFamilyPolicy} {.spec.ipFamilies[*]} {.spec.clusterIPs[*]}')" "RequireDualStack IPv4 IPv6 None"
kc delete svc pref plain hl >/dev/null 2>&1
# Go clients send targetPort 0 for one they did not set: it defaults to the port.
printf '{"apiVersion":"v1","kind":"Service","metadata":{"name":"zero-target"},"spec":{"ports":[{"port":81,"targetPort":0}]}}' | kc create -f - >/dev/null
check "a zero targetPort defaults to the port, as upstream" equals "$(kc get svc zero-target -o jsonpath='{.spec.ports[0].targetPort}')" "81"
kc delete svc zero-target >/dev/null 2>&1

summary
