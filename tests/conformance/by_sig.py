#!/usr/bin/env python3
"""Per-SIG counts and failure attribution for docs/conformance.md, from a conformance run's
JUnit report (../shared/conformance/run.sh writes it to $W/reports/<time>/junit_01.xml).

  by_sig.py [--serial] JUNIT_XML [JUNIT_XML ...]

Counts the 417 non-serial [Conformance] specs, or with --serial the 29 [Serial] ones.

Prints a Markdown table (passed / failed / skipped / not run, per SIG) and, for each failed
spec, the capability it needs, by the rules below (first match wins). A failure no rule
names is printed under "unattributed": those are the ones to look at first.
"""
import collections
import re
import sys
import xml.etree.ElementTree as ET

FAILED = {"failed", "timedout", "interrupted", "aborted", "panicked"}

# (regex on the spec name, capability, the issue that owns it)
RULES = [
    (r"Containers should|Variable Expansion should allow|Security Context (should support|When creating a pod with privileged|when creating containers with AllowPrivilegeEscalation)|consumable as environment variable|Pods should contain environment variables|Kubelet when scheduling|KubeletManagedEtcHosts|Sysctls .* should support sysctls|InitContainer|serve a basic image on each replica", "reads the pod's output (logs, exec, pods/proxy)", "#16"),
    (r"ResourceQuota|exceeded quota|LimitRange", "ResourceQuota and LimitRange (controller, admission)", "later: admission"),
    (r"DisruptionController", "PodDisruptionBudgets (disruption controller, eviction)", "#19"),
    (r"at least two untainted nodes", "a second node", "#19"),
    (r"InPlace Resize|activeDeadlineSeconds|Pod Generation", "kubelet: in-place resize, activeDeadlineSeconds, observedGeneration", "#16"),
    (r"Certificates API|SubjectReview", "CSR signing/approval, SubjectAccessReview (RBAC)", "#19 / later: RBAC"),
    (r"Events API|Discovery", "one resource in two versions (events.k8s.io/core Events, autoscaling/v1 HPA)", "later: API versions with conversion"),
    (r"Probing container|with readiness probe|liveness|startup probe|Lifecycle Hook|Lifecycle Sleep|sleep action|PreStop", "probes and lifecycle hooks", "#16"),
    (r"\[sig-storage\]|volume|Volume|Subpath|subpath|EmptyDir|Downward API|Projected|ConfigMap should be consumable via|Secrets should be consumable", "volumes", "#16"),
    (r"Kubectl logs|kubectl logs|\blogs\b|Container Runtime blackbox|termination message|Ephemeral Containers|attach|exec|port-forward|PortForward", "logs, exec, attach, port-forward", "#16"),
    (r"ServiceAccounts|TokenRequest|ServiceAccountIssuerDiscovery", "ServiceAccount tokens (TokenRequest)", "#16"),
    (r"\[sig-network\]|Service endpoints latency|Services|DNS|HostPort|Networking|Proxy|Ingress", "Services, DNS, pod networking", "#17"),
    (r"\[sig-apps\] (Job|CronJob|StatefulSet|Daemon set|ControllerRevision)", "Jobs, CronJobs, StatefulSets, DaemonSets", "later: workloads"),
    (r"AdmissionWebhook|CustomResource|Aggregator|ValidatingAdmissionPolicy|MutatingAdmissionPolicy|FieldValidation|CRD", "CRDs, webhooks, admission policies", "later: CRDs and admission"),
    (r"\[sig-cli\]", "kubectl against Services, logs and exec", "#16/#17"),
]


def sig_of(name):
    m = re.search(r"\[sig-[a-z-]+\]", name)
    return m.group(0) if m else "(none)"


def main():
    counts = collections.defaultdict(collections.Counter)
    failures = []
    args = sys.argv[1:]
    serial = "--serial" in args
    args = [a for a in args if a != "--serial"]
    for path in args:
        for case in ET.parse(path).getroot().iter("testcase"):
            name, status = case.get("name", ""), case.get("status", "")
            if not name.startswith("[It] ") or "[Conformance]" not in name:
                continue
            # The 417 non-serial specs, or with --serial the 29 [Serial] ones.
            if ("[Serial]" in name) != serial:
                continue
            name = name[len("[It] "):]
            if status == "passed":
                counts[sig_of(name)]["passed"] += 1
            elif status in FAILED:
                counts[sig_of(name)]["failed"] += 1
                failures.append(name)
            elif status == "skipped":
                node = case.find("skipped")
                msg = node.get("message", "") if node is not None else ""
                counts[sig_of(name)]["not run" if msg == "skipped" else "skipped"] += 1
    total = collections.Counter()
    print("| SIG | passed | failed | skipped | not run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for sig in sorted(counts):
        c = counts[sig]
        total.update(c)
        print(f"| {sig} | {c['passed']} | {c['failed']} | {c['skipped']} | {c['not run']} |")
    print(f"| **all** | {total['passed']} | {total['failed']} | {total['skipped']} | {total['not run']} |")
    by_cap = collections.defaultdict(list)
    for f in failures:
        for rx, cap, owner in RULES:
            if re.search(rx, f):
                by_cap[f"{cap} ({owner})"].append(f)
                break
        else:
            by_cap["unattributed"].append(f)
    print()
    for cap in sorted(by_cap, key=lambda c: (c == "unattributed", c)):
        print(f"### {cap}: {len(by_cap[cap])}")
        for f in sorted(by_cap[cap]):
            print(f"- {f}")
        print()


if __name__ == "__main__":
    main()
