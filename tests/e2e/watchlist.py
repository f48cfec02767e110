#!/usr/bin/env python3
"""Raw API requests for the fidelity tier, with the kubeconfig's client certificate.

  watchlist.py KUBECONFIG watch PATH [--create-after-bookmark NS/NAME] [--max-seconds N]
      Opens a watch (PATH with its query) and prints one line per event:
      `TYPE NAME RV ANNOTATION` (ANNOTATION: the initial-events-end annotation or -).
      With --create-after-bookmark, creates ConfigMap NS/NAME once the first bookmark came,
      and stops when its ADDED event arrives.
  watchlist.py KUBECONFIG raw METHOD PATH [BODY] [--accept MEDIA]
      Prints the status code on one line, then the body exactly as received, then <EOF>.
"""
import base64
import http.client
import json
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.parse


def connect(kubeconfig, timeout):
    text = open(kubeconfig).read()

    def get(k):
        return base64.b64decode(re.search(k + r": (\S+)", text).group(1))

    server = urllib.parse.urlparse(re.search(r"server: (\S+)", text).group(1))
    d = tempfile.mkdtemp()
    for name, key in [("ca", "certificate-authority-data"), ("crt", "client-certificate-data"),
                      ("key", "client-key-data")]:
        with open(os.path.join(d, name), "wb") as f:
            f.write(get(key))
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca"))
    ctx.load_cert_chain(os.path.join(d, "crt"), os.path.join(d, "key"))
    return http.client.HTTPSConnection(server.hostname, server.port, context=ctx, timeout=timeout)


def watch(kc, path, create_after, max_seconds):
    conn = connect(kc, max_seconds)
    conn.request("GET", path)
    resp = conn.getresponse()
    if resp.status != 200:
        print(f"HTTP {resp.status} {resp.read().decode()}")
        return
    deadline = time.time() + max_seconds
    created = False
    while time.time() < deadline:
        line = resp.readline()
        if not line:
            break
        ev = json.loads(line)
        meta = ev["object"].get("metadata", {})
        ann = (meta.get("annotations") or {}).get("k8s.io/initial-events-end", "-")
        name = meta.get("name", "-") if ev["type"] != "ERROR" else ev["object"].get("reason")
        print(ev["type"], name, meta.get("resourceVersion", "-"), ann, flush=True)
        if create_after and ev["type"] == "BOOKMARK" and not created:
            ns, name = create_after.split("/")
            c = connect(kc, 10)
            body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": name, "labels": {"a": "1"}}})
            c.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body,
                      {"Content-Type": "application/json"})
            c.getresponse().read()
            created = True
        if create_after and created and ev["type"] == "ADDED" and \
                meta.get("name") == create_after.split("/")[1]:
            break


def raw(kc, method, path, body, accept=None):
    conn = connect(kc, 20)
    headers = {"Content-Type": "application/json", "User-Agent": "kite-e2e"} if body else \
        {"User-Agent": "kite-e2e"}
    if accept:
        headers["Accept"] = accept
    conn.request(method, path, body, headers)
    resp = conn.getresponse()
    print(resp.status)
    # The end marker shows whether the body ends in a newline (upstream's do).
    sys.stdout.write(resp.read().decode() + "<EOF>")


def main():
    a = sys.argv[1:]
    kc, cmd = a[0], a[1]
    if cmd == "watch":
        path = a[2]
        create_after = a[a.index("--create-after-bookmark") + 1] if "--create-after-bookmark" in a else None
        secs = float(a[a.index("--max-seconds") + 1]) if "--max-seconds" in a else 10
        try:
            watch(kc, path, create_after, secs)
        except (TimeoutError, OSError):
            pass
    elif cmd == "raw":
        accept = None
        if "--accept" in a:
            i = a.index("--accept")
            accept = a[i + 1]
            del a[i:i + 2]
        raw(kc, a[2], a[3], a[4] if len(a) > 4 else None, accept)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
