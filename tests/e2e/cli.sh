#!/usr/bin/env bash
# End-to-end: the `kite` command line (issue 2): --version, flag and config-file errors, the
# config file and KITE_* environment, their precedence. (Start-up time is a benchmark.)
source "$(dirname "$0")/../lib.sh"
echo "# kubectl: $KUBECTL"

check "--version names kite and the Kubernetes version" contains "$("$KITE_BIN" --version)" "(kubernetes v1.36.0)"
check "kite --help lists the commands in groups" equals "$("$KITE_BIN" --help | grep -cE '^(Cluster:|Node:|Tools:|  check-config |  kubectl |  server )')" 6
check "kite server --help groups its flags" equals "$("$KITE_BIN" server --help | grep -cE '^(Config|API server|Datastore|Networking|Node|Components|Controllers|Logging):$')" 8
check "a mistyped flag suggests the closest one" contains "$("$KITE_BIN" server --data-dri x 2>&1)" "a similar argument exists: '--data-dir'"
check "a mistyped command suggests the closest one" contains "$("$KITE_BIN" serve 2>&1)" "a similar subcommand exists: 'server'"
out=$("$KITE_BIN" server --no-such-flag 2>&1); rc=$?
check "an unknown flag fails" test "$rc" -ne 0
check "an unknown flag is named" contains "$out" "--no-such-flag"
out=$("$KITE_BIN" server --data-dir "$WORK/x" --service-node-port-range 5-1 2>&1); rc=$?
check "a bad flag value fails with one line naming the flag" equals "$rc:$(wc -l <<<"$out")" "1:1"
check "the bad value's message names the flag" contains "$out" "--service-node-port-range"
printf 'https-listen-port: 6553\nbogus-key: 1\n' >"$WORK/bad.yaml"
out=$("$KITE_BIN" server --config "$WORK/bad.yaml" 2>&1); rc=$?
check "an unknown config key fails" test "$rc" -ne 0
check "the error names the key and the file in one line" equals "$(wc -l <<<"$out")" "1"
check "the error names the unknown key" contains "$out" '"bogus-key"'
printf 'tls-san: [a\n' >"$WORK/malformed.yaml"
out=$("$KITE_BIN" server --config "$WORK/malformed.yaml" 2>&1); rc=$?
check "malformed config YAML fails in one line" equals "$rc:$(wc -l <<<"$out")" "1:1"
check "a cluster CIDR too small for a node's /24 is refused" fails_with "--cluster-cidr" "$KITE_BIN" server --data-dir "$WORK/x" --cluster-cidr 10.42.0.0/25
check "a missing explicit config file is an error" fails_with "reading config file" "$KITE_BIN" server --config "$WORK/none.yaml"
check "an unknown --disable component is refused, naming what can be" fails_with "kite can disable: dns, servicelb" "$KITE_BIN" server --data-dir "$WORK/x" --disable bogus

# --log-format json: one JSON object a line, the start-up lines among them.
JPORT=$(free_port)
"$KITE_BIN" server --log-format json --disable-agent --data-dir "$WORK/json" --bind-address 127.0.0.1 \
  --https-listen-port "$JPORT" --write-kubeconfig "$WORK/json.yaml" 2>"$WORK/json.log" &
jpid=$!
wait_for 10 "the JSON-logging server to be ready" grep -q "kite is ready" "$WORK/json.log"
kill "$jpid"; wait "$jpid" 2>/dev/null
check "--log-format json writes one JSON object a line" python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert any(l["fields"]["message"].startswith("API server serving at https://") for l in lines), lines
' "$WORK/json.log"

# Values from the config file apply; the environment beats the file; the command line beats both.
PORT=$(free_port)
cat >"$WORK/config.yaml" <<YAML
https-listen-port: 1
write-kubeconfig-mode: "644"
tls-san:
  - kite-from-config.example
cluster-domain: from-file.local
YAML
# Drop-ins merge after it in name order, as K3s's: `key+` appends to a list, a plain key
# replaces; an unknown key names its drop-in.
mkdir -p "$WORK/config.yaml.d"
printf 'tls-san+: [kite-from-dropin.example]\n' >"$WORK/config.yaml.d/10-san.yaml"
printf 'bogus: 1\n' >"$WORK/config.yaml.d/20-bad.yaml"
check "an unknown key in a drop-in names the drop-in" fails_with "config.yaml.d/20-bad.yaml: unknown key \"bogus\"" "$KITE_BIN" server --config "$WORK/config.yaml"
rm "$WORK/config.yaml.d/20-bad.yaml"
printf 'write-kubeconfig-mode: "640"\n' >"$WORK/config.yaml.d/20-mode.yml"
printf 'write-kubeconfig-mode: "644"\nignored: the .txt is not a drop-in\n' >"$WORK/config.yaml.d/30-notes.txt"
export KITE_HTTPS_LISTEN_PORT=2
start_server --config "$WORK/config.yaml" || { cat "$WORK/server.log"; exit 1; }
unset KITE_HTTPS_LISTEN_PORT
check "the command line beats env and file (port $PORT)" contains "$(kc cluster-info 2>&1)" ":$PORT"
check "write-kubeconfig-mode from the later drop-in" equals "$(stat -c %a "$KUBECONFIG")" "640"
san=$(echo | openssl s_client -connect "127.0.0.1:$PORT" 2>/dev/null | openssl x509 -noout -ext subjectAltName 2>/dev/null)
check "tls-san from the config file is in the serving certificate" contains "$san" "kite-from-config.example"
check "tls-san+ from a drop-in is appended" contains "$san" "kite-from-dropin.example"
check "the cluster domain from the file is in the serving certificate" contains "$san" "kubernetes.default.svc.from-file.local"
check "the service IP is in the serving certificate" contains "$san" "10.43.0.1"

# A bookmark arrives on a watch that allows them (about once a minute, and 2 s before the
# watch times out); from a given revision there are no initial events to end.
rv=$(kc get --raw /api/v1/namespaces/default/configmaps | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
bm=$(kcurl "https://127.0.0.1:$PORT/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion=$rv&timeoutSeconds=4")
check "allowWatchBookmarks sends a BOOKMARK with a resourceVersion" contains "$bm" '"type":"BOOKMARK"'
check "timeoutSeconds ends the watch" test -n "$bm"

stop_server
for i in $(seq 1 200); do echo "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c$i\",\"namespace\":\"default\"}}"; done >"$WORK/many.json"
start_server --config "$WORK/config.yaml" || exit 1
kc create -f "$WORK/many.json" >/dev/null
stop_server
start_server --config "$WORK/config.yaml" || exit 1
check "objects are there after the restart" equals "$(kc get cm -n default -o name | grep -c '^configmap/c')" "200"

summary
