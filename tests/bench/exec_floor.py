#!/usr/bin/env python3
"""A kite-free endpoint for `kubectl exec`, the floor of the streams bench's exec part.

It answers what `kubectl exec POD -- CMD` asks of an API server, and nothing more:
discovery of the core group, the pod (a canned Running pod with one container), and the
exec upgrade (WebSocket, v5.channel.k8s.io), to which it sends at once what a kubelet sends
when the command has run: a Success status on the error channel, then stdout and stderr
closed. kubectl's time against it is kubectl's own part of an exec (its start, two TLS
connections with client certificates, the pod's GET, the upgrade, its shutdown), which no
server can take away; with the runtime's exec added, it is the floor of a whole exec.
(Like kite, it sends no v5 close signals: kubectl 1.32 discards them.)

Usage: exec_floor.py DIR PORT [RUN]. RUN (0.03 s) is how long after the upgrade the
status goes out, standing for the command's run: client-go drops a status that comes
before it has set up its streams. The floor subtracts it and adds the runtime's own exec
time instead. Writes in DIR a CA, server and client certificates (with
openssl) and DIR/kubeconfig, then serves https://127.0.0.1:PORT until killed. Python does
the work a real server's code would, so the floor is, if anything, a little high.
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

d, port = sys.argv[1], int(sys.argv[2])
# Seconds between the upgrade and the status (the floor subtracts them again).
RUN = float(sys.argv[3]) if len(sys.argv) > 3 else 0.03


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ec_key(name):
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/{name}.key")


ec_key("ca")
openssl("req", "-x509", "-new", "-key", f"{d}/ca.key", "-days", "1", "-subj", "/CN=floor-ca", "-out", f"{d}/ca.crt")
for name, subj, ext in [
    ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
    ("client", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth"),
]:
    ec_key(name)
    openssl("req", "-new", "-key", f"{d}/{name}.key", "-subj", subj, "-out", f"{d}/{name}.csr")
    with open(f"{d}/{name}.ext", "w") as f:
        f.write(ext + "\n")
    openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.crt")

with open(f"{d}/kubeconfig", "w") as f:
    f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: floor, cluster: {{server: "https://127.0.0.1:{port}", certificate-authority: "{d}/ca.crt"}}}}]
users: [{{name: admin, user: {{client-certificate: "{d}/client.crt", client-key: "{d}/client.key"}}}}]
contexts: [{{name: floor, context: {{cluster: floor, user: admin, namespace: default}}}}]
current-context: floor
""")

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000001",
                 "resourceVersion": "1"},
    "spec": {"containers": [{"name": "web", "image": "kite.test/shell:1"}], "nodeName": "floor"},
    "status": {"phase": "Running",
               "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0, "image": "kite.test/shell:1",
                                      "imageID": "", "state": {"running": {}}}]},
}
API = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}]}
GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
V1 = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "shortNames": ["po"],
     "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
    {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]},
]}
ROUTES = {"/api": API, "/apis": GROUPS, "/api/v1": V1, "/api/v1/namespaces/default/pods/web": POD}


def read_request(f):
    line = f.readline()
    if not line:
        return None, None, {}
    method, target, _ = line.decode().split(" ", 2)
    headers = {}
    while True:
        h = f.readline().decode()
        if h in ("\r\n", "\n", ""):
            break
        k, v = h.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return method, target, headers


def ws_frame(payload, opcode=2):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    else:
        head += bytes([126]) + n.to_bytes(2, "big")
    return head + payload


def serve(conn):
    try:
        f = conn.makefile("rb")
        while True:
            method, target, headers = read_request(f)
            if method is None:
                return
            path = target.split("?", 1)[0]
            if path.endswith("/exec") and headers.get("upgrade", "").lower() == "websocket":
                protos = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
                proto = "v5.channel.k8s.io" if "v5.channel.k8s.io" in protos else protos[0]
                accept = base64.b64encode(hashlib.sha1(
                    (headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
                status = json.dumps({"metadata": {}, "status": "Success"}).encode()
                conn.sendall((
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n").encode())
                # The command's run: client-go drops frames that come before it has set up
                # its streams, so the status waits as long as a runtime's exec would.
                time.sleep(RUN)
                conn.sendall(ws_frame(b"\x03" + status) + ws_frame((1000).to_bytes(2, "big"), opcode=8))
                # Until the client closes its end.
                while f.read(4096):
                    pass
                return
            body = json.dumps(ROUTES[path]).encode() if path in ROUTES else b'{"kind":"Status","code":404}'
            code = "200 OK" if path in ROUTES else "404 Not Found"
            conn.sendall((f"HTTP/1.1 {code}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    except (OSError, ValueError, KeyError):
        pass
    finally:
        conn.close()


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{d}/server.crt", f"{d}/server.key")
ctx.load_verify_locations(f"{d}/ca.crt")
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.set_alpn_protocols(["http/1.1"])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
open(f"{d}/listening", "w").write(str(os.getpid()))
while True:
    c, _ = srv.accept()
    # As Go's and kite's servers: no Nagle (a TLS record split in two writes would wait
    # for the client's delayed ACK).
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s = ctx.wrap_socket(c, server_side=True)
    except (OSError, ssl.SSLError):
        c.close()
        continue
    threading.Thread(target=serve, args=(s,), daemon=True).start()
