#!/usr/bin/env bash
# End-to-end: volumes and ServiceAccount tokens (issue 16) with the real kubectl, as root:
# a ConfigMap as env and as the page an HTTP server serves (edited live), a Secret on tmpfs,
# a shared emptyDir, downwardAPI, hostPath types, subPath, image volumes, the kube-api-access token
# (verified against /openid/v1/jwks) and `kubectl create token`, upstream's errors, and
# mounts across a kite restart and pod deletion. A node tier: it owns the kite0 bridge
# while it runs, so run.sh runs it after the kubelet tier, never beside it.
source "$(dirname "$0")/../lib.sh"
node_tier volumes
mkdir -p "$WORK/host/existing"
start_server || { cat "$WORK/server.log"; exit 1; }
wait_for 20 "the node to be Ready" node_ready
wait_for 20 "the default ServiceAccount" kc get serviceaccount default

kc create configmap site --from-literal=index.html='<h1>version one</h1>' --from-literal=color=blue >/dev/null
kc create secret generic creds --from-literal=password=s3cret --from-literal=user=admin >/dev/null
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web, tier: front}}
spec:
  securityContext: {fsGroup: 2000}
  containers:
  - name: web
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait']
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: site, key: color}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts:
    - {name: site, mountPath: /www}
    - {name: site, mountPath: /etc/color, subPath: color}
    - {name: creds, mountPath: /etc/creds}
    - {name: shared, mountPath: /shared}
    - {name: scratch, mountPath: /scratch}
    - {name: info, mountPath: /etc/podinfo}
    - {name: host, mountPath: /host}
    - {name: host, mountPath: /host-ro, readOnly: true}
    - {name: shared, mountPath: /per-pod, subPathExpr: \$(POD_NAME)}
  - name: writer
    image: kite.test/app:1
    command: [sh, -c, 'trap "exit 0" TERM; echo from-writer > /data/msg; id -G > /data/groups; sleep 3600 & wait']
    volumeMounts: [{name: shared, mountPath: /data}]
  volumes:
  - {name: site, configMap: {name: site}}
  - {name: creds, secret: {secretName: creds, defaultMode: 0400, items: [{key: password, path: pw/password}]}}
  - {name: shared, emptyDir: {}}
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - {name: host, hostPath: {path: $WORK/host/made, type: DirectoryOrCreate}}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: mem, resourceFieldRef: {containerName: web, resource: limits.memory, divisor: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: no-token}
spec:
  automountServiceAccountToken: false
  containers: [{name: c, image: kite.test/shell:1, command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']}]
YAML
wait_for 60 "web to run" running web
wait_for 60 "no-token to run" running no-token
ex() { kc exec web -c web -- "$@"; }

# --- ConfigMaps -------------------------------------------------------------------
check "a ConfigMap as env" equals "$(ex sh -c 'echo $COLOR')" "blue"
check "and as the page the server serves" equals "$(ex wget -qO- http://127.0.0.1:8080/index.html)" "<h1>version one</h1>"
check "written with upstream's ..data symlink" contains "$(ex ls -la /www)" "..data -> ..20"
check "read-only in the container" fails_with "Read-only file system" ex sh -c 'echo x > /www/new'
check "a subPath mounts one key as a file" equals "$(ex cat /etc/color)" "blue"
kc create configmap site --from-literal=index.html='<h1>version two</h1>' --from-literal=color=green \
  --dry-run=client -o yaml | kc replace -f - >/dev/null
kc label pod web tier=back --overwrite >/dev/null
page_changed() { [ "$(ex wget -qO- http://127.0.0.1:8080/index.html)" = "<h1>version two</h1>" ]; }
check "editing the ConfigMap changes the served page within 90 s" wait_for 90 "the new page" page_changed
check "without a restart" equals "$(kc get pod web -o jsonpath='{.status.containerStatuses[?(@.name=="web")].restartCount}')" "0"
check "a subPath mount keeps what it had (as upstream)" equals "$(ex cat /etc/color)" "blue"
labels_changed() { grep -qx 'tier="back"' <<<"$(ex cat /etc/podinfo/labels)"; }
check "a downwardAPI volume follows the pod's labels" wait_for 90 "the new labels" labels_changed

# --- Secrets ----------------------------------------------------------------------
check "a Secret as env" equals "$(ex sh -c 'echo $PASSWORD')" "s3cret"
check "and as a file, at its item's path" equals "$(ex cat /etc/creds/pw/password)" "s3cret"
check "with its defaultMode and the fsGroup's group (-r--r-----)" \
  contains "$(ex sh -c 'ls -lL /etc/creds/pw/password')" "-r--r-----"
check "only the items asked for" equals "$(ex ls /etc/creds)" "pw"
check "on tmpfs in the container" contains "$(ex sh -c 'grep " /etc/creds " /proc/mounts')" "tmpfs"
uid=$(kc get pod web -o jsonpath='{.metadata.uid}')
voldir="$DATA/agent/pods/$uid/volumes"
check "and on the node: never on disk" equals "$(findmnt -n -o FSTYPE "$voldir/kubernetes.io~secret/creds")" "tmpfs"

# --- emptyDir, hostPath, downwardAPI ---------------------------------------------
check "two containers share an emptyDir" equals "$(ex cat /shared/msg)" "from-writer"
check "the fsGroup is among the other container's groups" contains "$(ex cat /shared/groups)" "2000"
check "emptyDir medium Memory is a tmpfs" contains "$(ex sh -c 'grep " /scratch " /proc/mounts')" "tmpfs"
check "a downwardAPI volume: the pod's name" equals "$(ex cat /etc/podinfo/name)" "web"
check "a resourceFieldRef with a divisor (no limit: the node's memory, in Mi)" test "$(ex cat /etc/podinfo/mem)" -gt 0
check "hostPath DirectoryOrCreate makes the directory" test -d "$WORK/host/made"
ex sh -c 'echo from-pod > /host/f'
check "writes through to the node" equals "$(cat "$WORK/host/made/f")" "from-pod"
check "a readOnly mount refuses writes" fails_with "Read-only file system" ex sh -c 'echo x > /host-ro/g'
check "subPathExpr expands the container's env" equals "$(ex sh -c 'echo hi > /per-pod/x; cat /shared/web/x')" "hi"

# --- the ServiceAccount token ------------------------------------------------------
sa=/var/run/secrets/kubernetes.io/serviceaccount
check "every pod gets the kube-api-access volume" contains "$(kc get pod web -o jsonpath='{.spec.volumes[*].name}')" "kube-api-access-"
check "with the namespace" equals "$(ex cat $sa/namespace)" "default"
check "and the cluster CA" equals "$(ex cat $sa/ca.crt)" "$(kc get configmap kube-root-ca.crt -o jsonpath='{.data.ca\.crt}')"
check "unless automountServiceAccountToken is false" fails_with "No such file" kc exec no-token -- ls $sa
ex cat $sa/token >"$WORK/pod.jwt"
kc get --raw /openid/v1/jwks >"$WORK/jwks.json"
# The JWT's signature, checked with openssl against the published key.
verify_jwt() {
  python3 - "$1" "$WORK/jwks.json" "$WORK" <<'PY'
import base64, json, sys
tok, jwks, work = open(sys.argv[1]).read().strip(), json.load(open(sys.argv[2])), sys.argv[3]
h, p, s = tok.split(".")
d = lambda x: base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
kid = json.loads(d(h))["kid"]
k = [k for k in jwks["keys"] if k["kid"] == kid][0]
# SubjectPublicKeyInfo of a P-256 point, then the raw r||s signature as DER.
spki = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + d(k["x"]) + d(k["y"])
open(work + "/pub.pem", "w").write("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(spki).decode() + "\n-----END PUBLIC KEY-----\n")
def der_int(b):
    b = b.lstrip(b"\x00") or b"\x00"
    if b[0] & 0x80: b = b"\x00" + b
    return b"\x02" + bytes([len(b)]) + b
sig = d(s); body = der_int(sig[:32]) + der_int(sig[32:])
open(work + "/sig.der", "wb").write(b"\x30" + bytes([len(body)]) + body)
open(work + "/signed", "w").write(h + "." + p)
print(json.loads(d(p))["sub"])
PY
}
check "the token names the pod's account" equals "$(verify_jwt "$WORK/pod.jwt")" "system:serviceaccount:default:default"
check "its JWT verifies against /openid/v1/jwks" \
  openssl dgst -sha256 -verify "$WORK/pub.pem" -signature "$WORK/sig.der" "$WORK/signed"
tok_kubeconfig() {
  kc config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$WORK/ca.crt"
  cat >"$WORK/token.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kite, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: $WORK/ca.crt}}]
users: [{name: t, user: {token: "$1"}}]
contexts: [{name: kite, context: {cluster: kite, user: t}}]
current-context: kite
EOF
}
tok_kubeconfig "$(cat "$WORK/pod.jwt")"
who=$(KUBECONFIG="$WORK/token.kubeconfig" kc auth whoami 2>&1)
check "the API server authenticates the pod's token" contains "$who" "system:serviceaccount:default:default"
check "bound to the pod" contains "$who" "authentication.kubernetes.io/pod-name"
tok_kubeconfig "$(kc create token default)"
check "kubectl create token default: a token kubectl auth whoami accepts" \
  contains "$(KUBECONFIG="$WORK/token.kubeconfig" kc auth whoami 2>&1)" "system:serviceaccount:default:default"
check "what the account may do is still the authorizer's (no RBAC yet)" \
  fails_with "forbidden" env KUBECONFIG="$WORK/token.kubeconfig" "$KUBECTL" get pods
check "a token of the wrong signer is refused" \
  fails_with "Unauthorized" env KUBECONFIG="$WORK/token.kubeconfig" "$KUBECTL" --token "$(cut -d. -f1,2 "$WORK/pod.jwt").AAAA" get pods
check "TokenRequest: upstream's minimum duration" \
  fails_with "may not specify a duration less than 10 minutes" kc create token default --duration=1m
check "TokenRequest: a missing account is NotFound" fails_with 'serviceaccounts "nope" not found' kc create token nope
rev=$(printf '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"%s"}}' "$(cat "$WORK/pod.jwt")" | kc create -f - -o jsonpath='{.status.authenticated} {.status.user.username}')
check "TokenReview authenticates it" equals "$rev" "true system:serviceaccount:default:default"

# --- image volumes -----------------------------------------------------------------
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: imgvol}
spec:
  containers:
  - name: c
    image: kite.test/shell:1
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
    volumeMounts: [{name: img, mountPath: /img}]
  volumes: [{name: img, image: {reference: kite.test/hello:1}}]
YAML
check "an image volume's pull policy defaults as an image's" equals "$(kc get pod imgvol -o jsonpath='{.spec.volumes[0].image.pullPolicy}')" "IfNotPresent"
wait_for 60 "imgvol to run" running imgvol
check "an image volume holds the image's files" equals "$(kc exec imgvol -- ls /img/usr/bin)" "hello"
check "read-only" fails_with "Read-only file system" kc exec imgvol -- touch /img/x
imguid=$(kc get pod imgvol -o jsonpath='{.metadata.uid}')
# A one-layer image's volume is a bind mount from the same filesystem: every sync of
# the pod must see it as mounted (by the mount table), not stack another on it.
kc label pod imgvol resynced=1 >/dev/null; kc label pod imgvol resynced=2 --overwrite >/dev/null; sleep 1
check "an image volume is mounted once, however often the pod syncs" \
  equals "$(grep -c " $DATA/agent/pods/$imguid/volumes/kubernetes.io~image/img " /proc/self/mountinfo || true)" "1"
kc delete pod imgvol --wait=true --timeout=60s >/dev/null
check "deleting the pod unmounts it" equals "$(grep -c " $DATA/agent/pods/$imguid/" /proc/self/mountinfo || true)" "0"

# --- bad input ---------------------------------------------------------------------
check "a pod whose ServiceAccount does not exist is refused (upstream's message)" \
  fails_with 'error looking up service account default/ghost: serviceaccount "ghost" not found' \
  kc run ghost --image=kite.test/shell:1 --overrides='{"spec":{"serviceAccountName":"ghost"}}'
check "Bidirectional mount propagation needs a privileged container" \
  fails_with "Bidirectional mount propagation is available only to privileged containers" \
  kc run bidi --image=kite.test/shell:1 --overrides='{"spec":{"containers":[{"name":"bidi","image":"kite.test/shell:1","volumeMounts":[{"name":"v","mountPath":"/v","mountPropagation":"Bidirectional"}]}],"volumes":[{"name":"v","emptyDir":{}}]}}'
cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  containers: [{name: c, image: kite.test/shell:1, command: [sleep, "3600"], volumeMounts: [{name: cm, mountPath: /cm}, {name: h, mountPath: /h}]}]
  volumes:
  - {name: cm, configMap: {name: nope}}
  - {name: h, hostPath: {path: $WORK/host/existing, type: File}}
---
apiVersion: v1
kind: Pod
metadata: {name: optional}
spec:
  containers: [{name: c, image: kite.test/shell:1, command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait'], volumeMounts: [{name: cm, mountPath: /cm}]}]
  volumes: [{name: cm, configMap: {name: absent, optional: true}}]
YAML
failed_mount() { kc get events --field-selector involvedObject.name=broken,reason=FailedMount -o jsonpath='{.items[*].message}' | grep -q .; }
wait_for 30 "a FailedMount event" failed_mount
ev=$(kc get events --field-selector involvedObject.name=broken,reason=FailedMount -o jsonpath='{.items[*].message}')
check "a missing ConfigMap: FailedMount with upstream's message" contains "$ev" 'MountVolume.SetUp failed for volume "cm" : configmap "nope" not found'
check "and the pod waits in ContainerCreating" equals "$(kc get pod broken -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')" "ContainerCreating"
kc create configmap nope --from-literal=k=v >/dev/null
hostpath_failed() { kc get events --field-selector involvedObject.name=broken,reason=FailedMount -o jsonpath='{.items[*].message}' | grep -q "is not a file"; }
check "a hostPath of the wrong type: upstream's check" wait_for 30 "the hostPath error" hostpath_failed
wait_for 60 "optional to run" running optional
check "an optional ConfigMap that is missing gives an empty volume" equals "$(kc exec optional -- ls /cm)" ""

# --- restarts and deletion ---------------------------------------------------------
mounts_of() { grep -c " $DATA/agent/pods/$1/" /proc/self/mountinfo || true; }
before=$(mounts_of "$uid")
check "the pod's tmpfs volumes are mounted on the node" test "$before" -ge 3
stop_server
start_server || { cat "$WORK/server.log"; exit 1; }
wait_for 30 "the node to be Ready again" node_ready
sleep 3
check "after a kite restart its volumes are mounted once, not twice" equals "$(mounts_of "$uid")" "$before"
check "the pod kept running" equals "$(kc get pod web -o jsonpath='{.status.containerStatuses[?(@.name=="web")].restartCount}')" "0"
check "and its volumes still serve" equals "$(ex wget -qO- http://127.0.0.1:8080/index.html)" "<h1>version two</h1>"
kc delete pod web --wait=true --timeout=60s >/dev/null
check "deleting the pod unmounts its volumes" equals "$(mounts_of "$uid")" "0"
check "and removes its directory" test ! -e "$DATA/agent/pods/$uid"

summary
