#!/usr/bin/env python3
"""A small OCI distribution registry (read-only) for kite's tests: it serves images from
OCI-layout archives, such as tests/images/build.py writes, on loopback.

    python3 tests/images/registry.py PORT_FILE REPO:TAG=ARCHIVE... [--user U --password P]

It listens on 127.0.0.1 on a free port and writes that port to PORT_FILE once serving.
Each REPO:TAG serves the (first) image of ARCHIVE: the tag answers with an image index
(linux/<this arch>), as most public images do; the manifest and blobs answer by digest.
With --user/--password every request needs HTTP Basic credentials (401 otherwise).
Every request is logged to stdout as "METHOD PATH STATUS", so tests can tell which
repository a pull asked for.
"""
import base64
import hashlib
import json
import sys
import tarfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INDEX = "application/vnd.oci.image.index.v1+json"


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def load(path):
    """(blobs by digest, index manifest descriptor) of an OCI-layout archive."""
    blobs = {}
    with tarfile.open(path) as tar:
        files = {m.name.lstrip("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            blobs["sha256:" + name.rsplit("/", 1)[1]] = data
    desc = json.loads(files["index.json"])["manifests"][0]
    return blobs, desc


def main():
    args = sys.argv[1:]
    user = password = None
    if "--user" in args:
        i = args.index("--user")
        user = args[i + 1]
        del args[i:i + 2]
    if "--password" in args:
        i = args.index("--password")
        password = args[i + 1]
        del args[i:i + 2]
    port_file, specs = args[0], args[1:]
    blobs, manifests, tags = {}, {}, {}
    for spec in specs:
        ref, archive = spec.split("=", 1)
        repo, tag = ref.rsplit(":", 1)
        b, desc = load(archive)
        blobs.update(b)
        mdesc = {k: v for k, v in desc.items() if k != "annotations"}
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [mdesc]}, sort_keys=True).encode()
        manifests[sha(index)] = (INDEX, index)
        manifests[desc["digest"]] = (desc["mediaType"], b[desc["digest"]])
        tags[(repo, tag)] = sha(index)
    want_auth = None
    if user is not None:
        want_auth = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, code, body=b"", ctype="application/json", headers=()):
            print(f"{self.command} {self.path} {code}", flush=True)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, code, err, msg):
            body = json.dumps({"errors": [{"code": err, "message": msg}]}).encode()
            extra = [("WWW-Authenticate", 'Basic realm="kite-test"')] if code == 401 else []
            self.reply(code, body, headers=extra)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            if want_auth and self.headers.get("Authorization") != want_auth:
                return self.error(401, "UNAUTHORIZED", "authentication required")
            path = self.path.split("?", 1)[0]
            if path in ("/v2", "/v2/"):
                return self.reply(200, b"{}")
            if not path.startswith("/v2/"):
                return self.error(404, "NOT_FOUND", "not found")
            rest = path[len("/v2/"):]
            for kind in ("/manifests/", "/blobs/"):
                if kind in rest:
                    repo, ref = rest.rsplit(kind, 1)
                    break
            else:
                return self.error(404, "NOT_FOUND", "not found")
            if kind == "/manifests/":
                digest = ref if ref.startswith("sha256:") else tags.get((repo, ref))
                if digest not in manifests or (not ref.startswith("sha256:") and (repo, ref) not in tags):
                    return self.error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repo}:{ref}")
                mt, body = manifests[digest]
                return self.reply(200, body, mt, [("Docker-Content-Digest", digest)])
            if ref not in blobs or not any(r == repo for r, _ in tags):
                return self.error(404, "BLOB_UNKNOWN", f"blob unknown: {ref}")
            return self.reply(200, blobs[ref], "application/octet-stream", [("Docker-Content-Digest", ref)])

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.replace(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
