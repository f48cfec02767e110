#!/usr/bin/env python3
"""Builds OCI image archives offline from Debian's busybox-static, for kite's tests and for
trying kite without a registry.

    python3 tests/images/build.py OUT_DIR [--docker]

writes to OUT_DIR:
  shell.tar   kite.test/shell:1   busybox with its applets; default command `sh`
  hello.tar   kite.test/hello:1   an HTTP server on port 80 (PORT overrides) whose page names
                                  the pod (its hostname) and its IP, like nginxdemos/hello
  app.tar     kite.test/app:1     the shell image run as a named user (`USER app`: uid 1000,
                                  also in group `data`, 50000), as many real images are
  tls.tar     kite.test/tls:1     the shell image with the host's `openssl` and the libraries
                                  it links (where the host has it): a TLS client of today's
                                  kind in a pod (busybox's own TLS predates signature_algorithms,
                                  which TLS 1.2 servers of today need, and has no TLS 1.3)

Archives are in OCI image layout (index.json + blobs/), or with --docker in `docker save`
format (manifest.json + one directory per layer). Load them with
`kite images import OUT_DIR/*.tar`, or drop them in <data-dir>/agent/images/ before kite
starts. The output is reproducible: the same busybox gives the same digests.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"
MTIME = 1700000000
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(os.uname().machine, os.uname().machine)

HELLO = r"""#!/bin/sh
# Serves a page naming this pod and its IP on ${PORT:-80}.
ip=$(ip -o -4 addr show eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]}')
mkdir -p /tmp/www
cat >/tmp/www/index.html <<PAGE
<!DOCTYPE html>
<html><head><title>Hello from kite</title></head>
<body>
<p>Server name: $(hostname)</p>
<p>Server address: ${ip:-unknown}:${PORT:-80}</p>
</body></html>
PAGE
echo "serving $(hostname) on ${ip:-unknown}:${PORT:-80}"
# As PID 1 httpd would ignore SIGTERM; this shell stops it at once instead.
httpd -f -v -p "${PORT:-80}" -h /tmp/www &
pid=$!
trap 'kill $pid; exit 0' TERM INT
wait $pid
"""


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def info(name, **kw):
    t = tarfile.TarInfo(name)
    t.mtime = MTIME
    t.uid = t.gid = 0
    t.uname = t.gname = "root"
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def rootfs(extra):
    """An uncompressed layer tar: busybox, its applet links, and `extra` files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "var", "var/www", "usr", "usr/bin"]:
            tar.addfile(info(d, type=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755))
        data = open(BUSYBOX, "rb").read()
        tar.addfile(info("bin/busybox", size=len(data), mode=0o755), io.BytesIO(data))
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for a in sorted(set(applets)):
            if a != "busybox":
                tar.addfile(info("bin/" + a, type=tarfile.SYMTYPE, linkname="busybox", mode=0o777))
        files = {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            "etc/group": "root:x:0:\nnobody:x:65534:\n",
        }
        files.update(extra)
        made = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made and d not in ("bin", "etc", "tmp", "root", "usr", "usr/bin", "var"):
                    tar.addfile(info(d, type=tarfile.DIRTYPE, mode=0o755))
                made.add(d)
        for name, text in sorted(files.items()):
            b = text if isinstance(text, bytes) else text.encode()
            mode = 0o755 if name.startswith("usr/bin/") or name.endswith(".so.2") else 0o644
            tar.addfile(info(name, size=len(b), mode=mode), io.BytesIO(b))
    return buf.getvalue()


def host_program(path):
    """`path` and the shared libraries it loads (as `ldd` lists them), as image files at the
    same places: a host program that runs in a busybox image."""
    files = {path.lstrip("/"): open(path, "rb").read()}
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        lib = next((w for w in line.split() if w.startswith("/")), None)
        if lib:
            real = os.path.realpath(lib)
            files[lib.lstrip("/")] = open(real, "rb").read()
    return files


def image(name, layer, cfg):
    diff_id = sha(layer)
    config = {
        "architecture": ARCH,
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "tests/images/build.py"}],
    }
    return name, layer, json.dumps(config, sort_keys=True).encode()


def write_oci(path, name, layer, config):
    gz = gzip.compress(layer, mtime=0)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz), "size": len(gz)}],
    }
    mb = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(mb), "size": len(mb),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
            "platform": {"architecture": ARCH, "os": "linux"},
        }],
    }
    entries = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), "index.json": json.dumps(index, sort_keys=True).encode()}
    for b in (config, gz, mb):
        entries["blobs/sha256/" + sha(b)[7:]] = b
    write_tar(path, entries, dirs=["blobs", "blobs/sha256"])


def write_docker(path, name, layer, config):
    cid = sha(config)[7:]
    lid = sha(layer)[7:]
    manifest = [{"Config": cid + ".json", "RepoTags": [name.removeprefix("docker.io/library/")], "Layers": [lid + "/layer.tar"]}]
    entries = {cid + ".json": config, lid + "/layer.tar": layer, lid + "/VERSION": b"1.0", "manifest.json": json.dumps(manifest).encode()}
    write_tar(path, entries, dirs=[lid])


def write_tar(path, entries, dirs):
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            tar.addfile(info(d, type=tarfile.DIRTYPE, mode=0o755))
        for n, b in entries.items():
            tar.addfile(info(n, size=len(b), mode=0o644), io.BytesIO(b))
    os.replace(tmp, path)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit("usage: build.py OUT_DIR [--docker]")
    if not os.access(BUSYBOX, os.X_OK):
        sys.exit(f"{BUSYBOX} is missing: install it with `apt-get install busybox-static`")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    write = write_docker if "--docker" in sys.argv else write_oci
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    images = {
        "shell": image("kite.test/shell:1", rootfs({}), {"Env": env, "Cmd": ["sh"]}),
        "hello": image(
            "kite.test/hello:1",
            rootfs({"usr/bin/hello": HELLO}),
            {"Env": env + ["PORT=80"], "Cmd": ["/usr/bin/hello"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM"},
        ),
        "app": image(
            "kite.test/app:1",
            rootfs({
                "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                "app:x:1000:1000:app:/home/app:/bin/sh\n",
                "etc/group": "root:x:0:\nnobody:x:65534:\napp:x:1000:\ndata:x:50000:app\n",
            }),
            {"Env": env, "Cmd": ["sh"], "User": "app"},
        ),
        # No Env at all, as an image built FROM scratch: the runtime's default PATH applies.
        "noenv": image("kite.test/noenv:1", rootfs({}), {"Cmd": ["sh"]}),
    }
    if os.access("/usr/bin/openssl", os.X_OK):
        images["tls"] = image("kite.test/tls:1", rootfs(host_program("/usr/bin/openssl")), {"Env": env, "Cmd": ["sh"]})
    for file, (name, layer, config) in images.items():
        write(os.path.join(out, file + ".tar"), name, layer, config)
        print(f"{os.path.join(out, file + '.tar')}: {name}")


if __name__ == "__main__":
    main()
