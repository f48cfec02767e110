#!/usr/bin/env bash
# End-to-end: auto-deploying manifests (issue 18), as K3s's <data-dir>/server/manifests:
# applied at start and within seconds of a change, pruned when the file is deleted or no
# longer lists an object (K3s keeps them; kite does not), a `.skip` turning one off, and a
# bad file reported by an event and a log line while the others still apply.
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL"

DATA="$WORK/data"
M="$DATA/server/manifests"
mkdir -p "$M"
cat >"$M/pre.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: from-manifests}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: pre, namespace: from-manifests}
data: {a: "1"}
YAML
start_server || { cat "$WORK/server.log"; exit 1; }
data_of() { kc get cm "$1" -n "${2:-default}" -o jsonpath='{.data}' 2>/dev/null; }
gone() { ! kc get "$@" >/dev/null 2>&1; }

wait_for 10 "the manifest present at start to apply" kc get cm pre -n from-manifests
check "a manifest present at start is applied, its namespace first" equals "$(data_of pre from-manifests)" '{"a":"1"}'
check "its objects carry the file's label" equals "$(kc get cm pre -n from-manifests -o jsonpath='{.metadata.labels.kite\.io/manifest}')" "kite-manifest-pre.yaml"
check "the file has a record in kube-system" contains "$(kc get cm kite-manifest-pre.yaml -n kube-system -o jsonpath='{.data.file} {.data.checksum}')" "pre.yaml sha256:"

# A new file applies within 5 s; two objects, one of them JSON-file-made.
cat >"$M/app.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {mode: blue, extra: "x"}
---
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  selector: {app: app}
  ports: [{port: 80}]
YAML
echo '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-json"},"data":{"j":"1"}}' >"$M/j.json"
t0=$SECONDS
wait_for 5 "a new manifest to apply" kc get cm app-config
check "a dropped-in manifest appears within 5 s ($((SECONDS - t0)) s)" kc get svc app
wait_for 5 "a JSON manifest to apply" kc get cm from-json
check "a JSON manifest applies" equals "$(data_of from-json)" '{"j":"1"}'

# A change applies: fields set are set, a field removed from the file is removed, and what
# others added (a label by hand, the Service's clusterIP) stays.
kc label cm app-config by-hand=yes >/dev/null
ip=$(kc get svc app -o jsonpath='{.spec.clusterIP}')
sed -i 's/data: {mode: blue, extra: "x"}/data: {mode: green}/' "$M/app.yaml"
wait_for 5 "the change to apply" bash -c "[ '$(printf '%s' '{"mode":"green"}')' = \"\$($KUBECTL get cm app-config -o jsonpath='{.data}')\" ]"
check "a changed file's fields are applied and a removed field removed" equals "$(data_of app-config)" '{"mode":"green"}'
check "a label added by hand stays" equals "$(kc get cm app-config -o jsonpath='{.metadata.labels.by-hand}')" yes
check "the Service keeps its clusterIP" equals "$(kc get svc app -o jsonpath='{.spec.clusterIP}')" "$ip"

# An object the file no longer lists is pruned; the rest stays.
python3 - "$M/app.yaml" <<'PY'
import sys
p = sys.argv[1]
docs = open(p).read().split("---\n")
open(p, "w").write(docs[0])
PY
wait_for 5 "the Service to be pruned" gone svc app
check "an object removed from its file is deleted" gone svc app
check "the file's other object stays" kc get cm app-config

# A bad file gets an event and a log line naming it; a good file dropped with it applies.
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [broken\n' >"$M/bad.yaml"
printf 'apiVersion: v1\nkind: NoSuchKind\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: beside-unknown}\n' >"$M/unknown.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\n' >"$M/good.yaml"
wait_for 5 "the good file beside a bad one to apply" kc get cm good
ev() { kc get events -n kube-system --field-selector "involvedObject.name=$1" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}'; }
wait_for 10 "an event on the bad file" bash -c "$KUBECTL get events -n kube-system --field-selector involvedObject.name=kite-manifest-bad.yaml | grep -q ApplyManifestFailed"
check "a malformed file gets an ApplyManifestFailed event naming it" contains "$(ev kite-manifest-bad.yaml)" 'ApplyManifestFailed: Applying manifest "bad.yaml" failed: not valid YAML'
check "and a log line naming it" grep -q 'manifest="bad.yaml".*manifest not applied\|manifest not applied.*manifest="bad.yaml"\|manifest=bad.yaml.*manifest not applied\|manifest not applied.*manifest=bad.yaml' "$WORK/server.log"
wait_for 10 "an event on the unknown kind" bash -c "$KUBECTL get events -n kube-system --field-selector involvedObject.name=kite-manifest-unknown.yaml | grep -q ApplyManifestFailed"
check "an unknown kind is named in the event" contains "$(ev kite-manifest-unknown.yaml)" "this server has no kind NoSuchKind in v1"
check "the file's other objects still apply" kc get cm beside-unknown
check "a good file applies with its event" contains "$(ev kite-manifest-good.yaml)" 'AppliedManifest: Applied manifest "good.yaml" (1 objects)'

# `.skip` turns a file off: a change is not applied and nothing is pruned.
touch "$M/pre.yaml.skip"
sed -i 's/a: "1"/a: "2"/' "$M/pre.yaml"
rm "$M/good.yaml"
wait_for 5 "the deleted file's object to be pruned" gone cm good
check "a deleted file's objects are pruned" gone cm good
check "and its record is gone" gone cm kite-manifest-good.yaml -n kube-system
check "a skipped file's change is not applied" equals "$(data_of pre from-manifests)" '{"a":"1"}'
rm "$M/pre.yaml.skip"
wait_for 5 "the file to apply once not skipped" bash -c "[ \"\$($KUBECTL get cm pre -n from-manifests -o jsonpath='{.data.a}')\" = 2 ]"
check "removing the .skip applies the file again" equals "$(data_of pre from-manifests)" '{"a":"2"}'

# At start every file is applied again: an object deleted by hand comes back.
kc delete cm app-config >/dev/null
stop_server
start_server || exit 1
wait_for 10 "the file's object to come back at start" kc get cm app-config
check "a restart applies every file again" equals "$(data_of app-config)" '{"mode":"green"}'
summary
