#!/usr/bin/env python3
"""Creates objects from minimal bodies and compares the keys of what comes back with the keys
upstream kube-apiserver v1.36 returned for the same bodies (fixtures/upstream-minimal.json).

  minimal_objects.py KUBECONFIG NAMESPACE check     prints `ok KIND` or `DIFF KIND ...`
  minimal_objects.py KUBECONFIG NAMESPACE capture   (against upstream.sh's server) rewrites
                                                    the fixture from its answers

Values are cluster-specific (uids, times, addresses); the keys, recursively, are not.
metadata.managedFields is left out (kite does not implement server-side apply yet).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import watchlist  # noqa: E402

C = [{"name": "c", "image": "busybox"}]
BODIES = {
    "Service": ("/api/v1/namespaces/{ns}/services",
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s1"},
                 "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}}),
    "Deployment": ("/apis/apps/v1/namespaces/{ns}/deployments",
                   {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"},
                    "spec": {"selector": {"matchLabels": {"app": "a"}},
                             "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": C}}}}),
    "Pod": ("/api/v1/namespaces/{ns}/pods",
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
             "spec": {"automountServiceAccountToken": False, "containers": C}}),
    "Job": ("/apis/batch/v1/namespaces/{ns}/jobs",
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1"},
             "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": C}}}}),
    "CronJob": ("/apis/batch/v1/namespaces/{ns}/cronjobs",
                {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj1"},
                 "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
                     "spec": {"restartPolicy": "Never", "containers": C}}}}}}),
    "StatefulSet": ("/apis/apps/v1/namespaces/{ns}/statefulsets",
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ss1"},
                     "spec": {"selector": {"matchLabels": {"a": "b"}},
                              "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": C}}}}),
    "DaemonSet": ("/apis/apps/v1/namespaces/{ns}/daemonsets",
                  {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds1"},
                   "spec": {"selector": {"matchLabels": {"a": "b"}},
                            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": C}}}}),
    "ReplicationController": ("/api/v1/namespaces/{ns}/replicationcontrollers",
                              {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc1"},
                               "spec": {"selector": {"a": "b"},
                                        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": C}}}}),
    "ConfigMap": ("/api/v1/namespaces/{ns}/configmaps",
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {"a": "b"}}),
    "ResourceQuota": ("/api/v1/namespaces/{ns}/resourcequotas",
                      {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q1"},
                       "spec": {"hard": {"pods": "10"}}}),
    "Ingress": ("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
                {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i1"},
                 "spec": {"defaultBackend": {"service": {"name": "s1", "port": {"number": 80}}}}}),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
                      {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np1"},
                       "spec": {"podSelector": {}}}),
    "PodDisruptionBudget": ("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
                            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb1"},
                             "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}}),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
                                {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                                 "metadata": {"name": "h1"},
                                 "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                             "name": "d1"}, "maxReplicas": 3}}),
}
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "upstream-minimal.json")


def keys(v, path=""):
    out = set()
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "managedFields":
                continue
            out.add(path + "/" + k)
            out |= keys(x, path + "/" + k)
    elif isinstance(v, list):
        for x in v:
            out |= keys(x, path + "[]")
    return out


def create(kc, ns, kind):
    path, body = BODIES[kind]
    c = watchlist.connect(kc, 20)
    c.request("POST", path.format(ns=ns), json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    if r.status != 201:
        raise SystemExit(f"{kind}: HTTP {r.status}: {data.get('message')}")
    return data


def main():
    kc, ns, mode = sys.argv[1:4]
    if mode == "capture":
        out = {}
        for kind in BODIES:
            o = create(kc, ns, kind)
            o["metadata"].pop("managedFields", None)
            out[kind] = o
        with open(FIXTURE, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    want = json.load(open(FIXTURE))
    for kind in BODIES:
        got, exp = keys(create(kc, ns, kind)), keys(want[kind])
        if got == exp:
            print("ok", kind)
        else:
            print("DIFF", kind, "kite only:", sorted(got - exp), "upstream only:", sorted(exp - got))


if __name__ == "__main__":
    main()
