#!/usr/bin/env python3
"""32 concurrent writers update one ConfigMap, each with the resourceVersion it read.

For every revision exactly one PUT may succeed; every other attempt must get 409 Conflict.
Usage: concurrent_writers.py SERVER CA CERT KEY NAMESPACE ROUNDS
"""
import json
import ssl
import sys
import threading
import urllib.error
import urllib.request

server, ca, cert, key, ns, rounds = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
url = f"{server}/api/v1/namespaces/{ns}/configmaps/contended"


def call(method, body=None, u=url):
    req = urllib.request.Request(u, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


call("POST", {"metadata": {"name": "contended"}, "data": {"n": "0"}},
     u=f"{server}/api/v1/namespaces/{ns}/configmaps")
problems = []
for rnd in range(int(rounds)):
    status, current = call("GET")
    rv = current["metadata"]["resourceVersion"]
    results = []
    barrier = threading.Barrier(32)

    def writer(i):
        body = dict(current)
        # Unique per round: an update identical to the stored object is a no-op that
        # succeeds without a write (as upstream), which would count as a second success.
        body["data"] = {"n": f"{rnd}-{i}"}
        barrier.wait()
        results.append((call("PUT", body)[0], body["data"]["n"]))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [c for c, _ in results]
    ok = codes.count(200)
    conflicts = codes.count(409)
    if ok != 1 or conflicts != 31:
        problems.append(f"round {rnd} from rv {rv}: {ok} successes, {conflicts} conflicts, others {sorted(set(codes))}")
    # The stored object is the one winner's write, at a newer revision. (The global
    # revision may have moved further: controllers write too.)
    status, after = call("GET")
    winners = [n for c, n in results if c == 200]
    if after["data"]["n"] not in winners or int(after["metadata"]["resourceVersion"]) <= int(rv):
        problems.append(f"round {rnd}: stored {after['data']} at {after['metadata']['resourceVersion']} (from {rv}), winners {winners}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{rounds} rounds: exactly one success and 31 conflicts per revision")
