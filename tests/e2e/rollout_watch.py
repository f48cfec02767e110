#!/usr/bin/env python3
"""Watches a deployment's pods through `kubectl get pods -w` and records, over every
observed moment, the most pods not being deleted and the fewest Ready ones (counted once
all replicas were first Ready). Runs until STOPFILE exists; prints "max=N min=M".

usage: rollout_watch.py KUBECTL SELECTOR NAMESPACE REPLICAS STOPFILE
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time

kubectl, selector, ns, replicas, stopfile = sys.argv[1:6]
replicas = int(replicas)
proc = subprocess.Popen(
    [kubectl, "get", "pods", "-n", ns, "-l", selector, "-w", "-o", "json", "--output-watch-events"],
    stdout=subprocess.PIPE,
    text=True,
)
lines = queue.Queue()
threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
pods = {}
buf = ""
dec = json.JSONDecoder()
max_live, min_ready, started = 0, None, False
deadline = time.time() + 300


def ready(p):
    for c in p.get("status", {}).get("conditions", []) or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


while time.time() < deadline:
    chunk = ""
    try:
        while True:
            chunk += lines.get_nowait()
    except queue.Empty:
        pass
    buf += chunk
    progressed = True
    while progressed:
        progressed = False
        s = buf.lstrip()
        if not s:
            buf = ""
            break
        try:
            ev, end = dec.raw_decode(s)
        except json.JSONDecodeError:
            break
        buf = s[end:]
        progressed = True
        obj = ev.get("object", {})
        name = obj.get("metadata", {}).get("name")
        if ev.get("type") == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = obj
        live = [p for p in pods.values() if not p["metadata"].get("deletionTimestamp")]
        n_ready = sum(1 for p in live if ready(p))
        if n_ready >= replicas:
            started = True
        if started:
            max_live = max(max_live, len(live))
            min_ready = n_ready if min_ready is None else min(min_ready, n_ready)
    if os.path.exists(stopfile) and not chunk:
        break
    time.sleep(0.02)
proc.kill()
print(f"max={max_live} min={min_ready}")
