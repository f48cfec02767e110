//! A pod's status as the kubelet reports it, computed from its spec, what the runtime
//! has, and what the kubelet observed (probe verdicts, termination messages, OOM kills,
//! back-offs, failures): upstream's `generateAPIPodStatus`. Pure, so each rule has a unit
//! test; the pod worker posts the result when it differs from the API's.

use super::plan::{ephemeral_as_container, is_sidecar, latest};
use super::{Failure, Waiting};
use crate::containers::{Info, State};
use crate::probes;
use anyhow::Result;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;

/// What the status is computed from, besides the kubelet's observations.
pub(crate) struct Inputs<'a> {
    pub pod: &'a Pod,
    /// Every container of the pod the runtime has.
    pub have: &'a [Info],
    /// Why containers are not running (back-offs, pulls, config errors), by name.
    pub waiting: &'a HashMap<String, Waiting>,
    /// Why the kubelet failed the pod, if it did.
    pub failed: Option<&'a Failure>,
    /// A resize's condition: its type, reason and message.
    pub resize: Option<&'a (&'static str, &'static str, String)>,
    pub host_ip: IpAddr,
    /// The node's IPv6 InternalIP (`--node-ip v4,v6`): `hostIPs`' second entry.
    pub host_ip6: Option<IpAddr>,
    pub pod_ip: IpAddr,
    /// The pod's IPv6 address on a dual-stack node: `podIPs`' second entry.
    pub pod_ip_v6: Option<IpAddr>,
    pub now: jiff::Timestamp,
}

/// What the kubelet observed of a container, beyond its runtime record.
pub(crate) trait Observed {
    /// The latest verdict of the container's probe of `kind`.
    fn verdict(&self, id: &str, kind: probes::Kind) -> Option<probes::Verdict>;
    /// Whether the kernel's OOM killer ended it.
    fn oom_killed(&self, id: &str) -> bool;
    /// Its termination message (file, or log tail with FallbackToLogsOnError).
    fn termination_message(&self, c: &Container, i: &Info, code: i32) -> Option<String>;
}

/// The pod's status (the JSON of a `PodStatus`).
pub(crate) fn compute(inp: &Inputs, obs: &impl Observed) -> Result<Value> {
    let pod = inp.pod;
    let have = inp.have;
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let waiting = inp.waiting;
    let image_of = |c: &Container| c.image.clone().unwrap_or_default();
    let app_started = spec
        .containers
        .iter()
        .any(|c| have.iter().any(|i| i.name == c.name));
    let inits_done = app_started
        || spec.init_containers.iter().flatten().all(|c| {
            latest(have, &c.name).is_some_and(|i| {
                if is_sidecar(c) {
                    matches!(i.state, State::Running { .. })
                } else {
                    matches!(i.state, State::Exited { code: 0, .. })
                }
            })
        });
    let status_of = |c: &Container, init: bool| -> (Value, bool, Option<i32>, bool) {
        let mut atts: Vec<&Info> = have.iter().filter(|i| i.name == c.name).collect();
        atts.sort_by_key(|i| i.attempt);
        let cur = atts.last().copied();
        let prev = if atts.len() >= 2 {
            Some(atts[atts.len() - 2])
        } else {
            None
        };
        let term = |i: &Info| match &i.state {
            State::Exited { code, at } => {
                let reason = if *code != 0 && obs.oom_killed(&i.id) {
                    "OOMKilled"
                } else if *code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                let mut t = json!({
                    "exitCode": code, "reason": reason,
                    "startedAt": i.created.map(Time), "finishedAt": at.map(Time),
                    "containerID": format!("containerd://{}", i.id)});
                if let Some(m) = obs.termination_message(c, i, *code) {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
            _ => json!({}),
        };
        let mut running = false;
        let mut exit = None;
        let mut last_state = json!({});
        let state = match cur {
            None => {
                let w = waiting.get(&c.name).cloned().unwrap_or(Waiting {
                    reason: if init || !inits_done {
                        "PodInitializing".into()
                    } else {
                        "ContainerCreating".into()
                    },
                    message: String::new(),
                });
                json!({"waiting": {"reason": w.reason, "message": Some(w.message).filter(|m| !m.is_empty())}})
            }
            Some(i) => match &i.state {
                State::Running { .. } => {
                    running = true;
                    if let Some(p) = prev {
                        last_state = term(p);
                    }
                    json!({"running": {"startedAt": i.created.map(Time)}})
                }
                State::Created => json!({"waiting": {"reason": "ContainerCreating"}}),
                State::Exited { code, .. } => {
                    exit = Some(*code);
                    match waiting.get(&c.name) {
                        Some(w) if w.reason == "CrashLoopBackOff" => {
                            last_state = term(i);
                            json!({"waiting": {"reason": w.reason, "message": w.message}})
                        }
                        _ => {
                            if let Some(p) = prev {
                                last_state = term(p);
                            }
                            term(i)
                        }
                    }
                }
            },
        };
        let restart_count = cur.map(|i| i.attempt).unwrap_or(0);
        // Probes (see `probes`): started once the startup probe succeeded, ready once
        // the readiness probe did.
        let verdict = |kind: probes::Kind| {
            kind.of(c).is_none()
                || cur.and_then(|i| obs.verdict(&i.id, kind)) == Some(probes::Verdict::Success)
        };
        let started = verdict(probes::Kind::Startup);
        let readiness_ok = verdict(probes::Kind::Readiness);
        let mut s = json!({
            "name": c.name,
            // As upstream: the full name of the image a container was made from, the
            // spec's reference until then.
            "image": cur.map(|i| i.image.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| image_of(c)),
            "imageID": cur.map(|i| i.image_id.as_str()).unwrap_or_default(),
            // A completed init container is ready, as upstream reports it.
            "ready": (running && (!init || is_sidecar(c)) && started && readiness_ok)
                || (init && !is_sidecar(c) && exit == Some(0)),
            "restartCount": restart_count,
            "started": running && started,
            "state": state,
            "lastState": last_state,
        });
        // As upstream: what a running instance was given (a resize may be pending),
        // else what the spec asks.
        let given = cur
            .filter(|_| running)
            .and_then(|i| i.resources.clone())
            .unwrap_or_else(|| c.resources.clone().unwrap_or_default());
        if let Some(r) = given.requests.as_ref() {
            s["allocatedResources"] = json!(r);
        }
        s["resources"] = json!(given);
        if let Some(i) = cur {
            s["containerID"] = json!(format!("containerd://{}", i.id));
            if let Some(u) = crate::users::Identity::from_label(&i.user) {
                s["user"] =
                    json!({"linux": {"uid": u.uid, "gid": u.gid, "supplementalGroups": u.groups}});
            }
        }
        (s, running, exit, cur.is_some())
    };
    let mut init_statuses = Vec::new();
    let mut initialized = true;
    let mut init_failed = false;
    let mut sidecars_ready = true;
    // Upstream's condition messages name the containers holding the pod back.
    let mut incomplete: Vec<String> = Vec::new();
    let mut unready: Vec<String> = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let (s, _, exit, _) = status_of(c, true);
        if is_sidecar(c) {
            // Initialized once it has started (and stays so after).
            if !inits_done {
                initialized = false;
                if s["started"] != json!(true) {
                    incomplete.push(c.name.clone());
                }
            }
            if s["ready"] != json!(true) {
                sidecars_ready = false;
                unready.push(c.name.clone());
            }
            init_statuses.push(s);
            continue;
        }
        if exit != Some(0) && !app_started {
            initialized = false;
            incomplete.push(c.name.clone());
            if exit.is_some() && policy == "Never" {
                init_failed = true;
            }
        }
        init_statuses.push(s);
    }
    let mut statuses = Vec::new();
    let (mut n_running, mut n_exited, mut n_failed) = (0, 0, 0);
    for c in &spec.containers {
        let (s, running, exit, _) = status_of(c, false);
        let restarting = s["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        if running || restarting {
            n_running += 1;
        }
        if let Some(code) = exit {
            if !restarting {
                n_exited += 1;
                if code != 0 {
                    n_failed += 1;
                }
            }
        }
        if s["ready"] != json!(true) {
            unready.push(c.name.clone());
        }
        statuses.push(s);
    }
    let total = spec.containers.len();
    let all_ready = sidecars_ready && statuses.iter().all(|s| s["ready"] == json!(true));
    let phase = if init_failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if n_exited == total && total > 0 && policy != "Always" {
        if n_failed > 0 && policy == "Never" {
            "Failed"
        } else if n_failed == 0 {
            "Succeeded"
        } else {
            "Running"
        }
    } else if n_running > 0 || n_exited > 0 {
        "Running"
    } else {
        "Pending"
    };
    let failed = inp.failed;
    let phase = if failed.is_some() { "Failed" } else { phase };
    let t = inp.now;
    let old_conds = old.conditions.clone().unwrap_or_default();
    let cond = |typ: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = old_conds
            .iter()
            .find(|c| c.type_ == typ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(t));
        let mut v = json!({"type": typ, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if let Some(g) = pod.metadata.generation {
            v["observedGeneration"] = json!(g);
        }
        if let Some(r) = reason.filter(|_| !ok) {
            v["reason"] = json!(r);
            let names = |l: &[String]| format!("[{}]", l.join(" "));
            let msg = match (typ, r) {
                ("Initialized", _) if !incomplete.is_empty() => Some(format!(
                    "containers with incomplete status: {}",
                    names(&incomplete)
                )),
                ("Ready" | "ContainersReady", "ContainersNotReady") if !unready.is_empty() => Some(
                    format!("containers with unready status: {}", names(&unready)),
                ),
                _ => None,
            };
            if let Some(m) = msg {
                v["message"] = json!(m);
            }
        }
        v
    };
    let terminal = phase == "Succeeded" || phase == "Failed";
    let ready = all_ready && initialized && !terminal;
    let mut conditions = vec![
        cond("PodReadyToStartContainers", !terminal, None),
        cond("Initialized", initialized, Some("ContainersNotInitialized")),
        cond(
            "Ready",
            ready,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        cond(
            "ContainersReady",
            ready,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
    ];
    let resize = inp.resize;
    if let Some(f) = failed.as_ref().filter(|f| f.reason == "Evicted") {
        // As upstream's eviction manager: why the pod was disrupted.
        let mut c = cond("DisruptionTarget", true, None);
        c["reason"] = json!("TerminationByKubelet");
        c["message"] = json!(f.message);
        conditions.push(c);
    }
    if let Some((typ, reason, message)) = resize {
        let mut c = cond(typ, true, None);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        conditions.push(c);
    }
    match old_conds.iter().find(|c| c.type_ == "PodScheduled") {
        Some(ps) => conditions.push(serde_json::to_value(ps)?),
        // A static pod was never scheduled: it is on its node by definition.
        None => conditions.push(cond("PodScheduled", true, None)),
    }
    // Conditions the kubelet does not own (DisruptionTarget from the scheduler or an
    // eviction, readiness gates' from their controllers) are kept, as upstream's.
    const OWNED: &[&str] = &[
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
        "PodResizePending",
        "PodResizeInProgress",
    ];
    let owned = |t: &str| OWNED.contains(&t) || (t == "DisruptionTarget" && failed.is_some());
    for c in old_conds.iter().filter(|c| !owned(&c.type_)) {
        conditions.push(serde_json::to_value(c)?);
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": inp.host_ip.to_string(),
        "hostIPs": std::iter::once(inp.host_ip)
            .chain(inp.host_ip6)
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect::<Vec<_>>(),
        "podIP": inp.pod_ip.to_string(),
        "podIPs": std::iter::once(inp.pod_ip)
            .chain(inp.pod_ip_v6)
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect::<Vec<_>>(),
        "startTime": old.start_time.clone().unwrap_or(Time(t)),
        "containerStatuses": statuses,
        "qosClass": crate::cgroups::qos_class(pod),
    });
    if let Some(f) = &failed {
        status["reason"] = json!(f.reason);
        status["message"] = json!(f.message);
    }
    // Which spec this status answers (PodObservedGenerationTracking).
    if let Some(g) = pod.metadata.generation {
        status["observedGeneration"] = json!(g);
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    let ephemeral: Vec<Value> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(ephemeral_as_container)
        .map(|c| status_of(&c, false).0)
        .collect();
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, Probe};
    use std::collections::HashSet;

    #[derive(Default)]
    struct Seen {
        ready: HashSet<String>,
        oom: HashSet<String>,
    }

    impl Observed for Seen {
        fn verdict(&self, id: &str, kind: probes::Kind) -> Option<probes::Verdict> {
            (kind == probes::Kind::Readiness && self.ready.contains(id))
                .then_some(probes::Verdict::Success)
        }
        fn oom_killed(&self, id: &str) -> bool {
            self.oom.contains(id)
        }
        fn termination_message(&self, _: &Container, _: &Info, _: i32) -> Option<String> {
            None
        }
    }

    fn pod(policy: &str, init: &[&str], app: &[&str]) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: Some("busybox".into()),
            ..Default::default()
        };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
                containers: app.iter().map(c).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running(name: &str) -> Info {
        fake::info("u", name, 0, State::Running { pid: 1 })
    }

    fn exited(name: &str, attempt: u32, code: i32) -> Info {
        let at = Some(jiff::Timestamp::UNIX_EPOCH);
        fake::info("u", name, attempt, State::Exited { code, at })
    }

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// The status of `pod` with `have`, nothing waiting or failed.
    fn status_with(pod: &Pod, have: &[Info], seen: &Seen, failed: Option<&Failure>) -> PodStatus {
        let waiting = HashMap::new();
        let v = compute(
            &Inputs {
                pod,
                have,
                waiting: &waiting,
                failed,
                resize: None,
                host_ip: "10.0.0.1".parse().unwrap(),
                pod_ip: "10.42.0.5".parse().unwrap(),
                pod_ip_v6: None,
                host_ip6: None,
                now: t(0),
            },
            seen,
        )
        .unwrap();
        serde_json::from_value(v).unwrap()
    }

    fn status(pod: &Pod, have: &[Info]) -> PodStatus {
        status_with(pod, have, &Seen::default(), None)
    }

    fn cond<'a>(s: &'a PodStatus, typ: &str) -> &'a PodCondition {
        let conds = s.conditions.as_ref().unwrap();
        conds.iter().find(|c| c.type_ == typ).unwrap()
    }

    fn phase(s: &PodStatus) -> &str {
        s.phase.as_deref().unwrap()
    }

    #[test]
    fn a_pod_whose_containers_are_not_made_yet_is_pending_and_says_why() {
        let s = status(&pod("Always", &[], &["web"]), &[]);
        assert_eq!(phase(&s), "Pending");
        let w = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = w.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [web]")
        );
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn init_containers_hold_the_pod_in_pending_with_upstream_messages() {
        let p = pod("Always", &["setup"], &["web"]);
        let s = status(&p, &[running("setup")]);
        assert_eq!(phase(&s), "Pending");
        let init = cond(&s, "Initialized");
        assert_eq!(init.status, "False");
        assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        let app = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = app.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("PodInitializing"));
        // Done: initialized, and a completed init container reports ready.
        let s = status(&p, &[exited("setup", 0, 0), running("web")]);
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);
        assert_eq!(phase(&s), "Running");
        // A failed init container with restartPolicy Never fails the pod.
        let s = status(
            &pod("Never", &["setup"], &["web"]),
            &[exited("setup", 0, 1)],
        );
        assert_eq!(phase(&s), "Failed");
    }

    #[test]
    fn readiness_follows_the_probe_verdict() {
        let mut p = pod("Always", &[], &["web"]);
        p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
        let have = [running("web")];
        let s = status(&p, &have);
        assert_eq!(phase(&s), "Running");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert!(!s.container_statuses.as_ref().unwrap()[0].ready);
        let seen = Seen {
            ready: [have[0].id.clone()].into(),
            ..Default::default()
        };
        let s = status_with(&p, &have, &seen, None);
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert!(s.container_statuses.as_ref().unwrap()[0].ready);
    }

    #[test]
    fn the_phase_of_exited_containers_follows_the_restart_policy() {
        let both = |policy, a, b| {
            let s = status(
                &pod(policy, &[], &["a", "b"]),
                &[exited("a", 0, a), exited("b", 0, b)],
            );
            phase(&s).to_string()
        };
        assert_eq!(both("Never", 0, 0), "Succeeded");
        assert_eq!(both("OnFailure", 0, 0), "Succeeded");
        assert_eq!(both("Never", 0, 1), "Failed");
        assert_eq!(both("OnFailure", 0, 1), "Running");
        assert_eq!(both("Always", 0, 0), "Running");
        let s = status(&pod("Never", &[], &["a"]), &[exited("a", 0, 0)]);
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        let term = s.container_statuses.as_ref().unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(
            (term.exit_code, term.reason.as_deref()),
            (0, Some("Completed"))
        );
    }

    #[test]
    fn a_restarted_container_shows_its_count_and_last_state_and_oom_kills_say_so() {
        let p = pod("Always", &[], &["web"]);
        let first = exited("web", 0, 137);
        let have = [
            first.clone(),
            fake::info("u", "web", 1, State::Running { pid: 2 }),
        ];
        let seen = Seen {
            oom: [first.id.clone()].into(),
            ..Default::default()
        };
        let s = status_with(&p, &have, &seen, None);
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(c.restart_count, 1);
        assert!(c.state.as_ref().unwrap().running.is_some());
        let last = c.last_state.clone().unwrap().terminated.unwrap();
        assert_eq!(
            (last.exit_code, last.reason.as_deref()),
            (137, Some("OOMKilled"))
        );
        assert_eq!(
            c.container_id.as_deref(),
            Some(format!("containerd://{}", have[1].id).as_str())
        );
    }

    #[test]
    fn a_crash_loop_shows_waiting_and_keeps_the_pod_running() {
        let p = pod("Always", &[], &["web"]);
        let waiting: HashMap<String, Waiting> = [(
            "web".to_string(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off 10s restarting failed container=web".into(),
            },
        )]
        .into();
        let have = [exited("web", 0, 1)];
        let v = compute(
            &Inputs {
                pod: &p,
                have: &have,
                waiting: &waiting,
                failed: None,
                resize: None,
                host_ip: "10.0.0.1".parse().unwrap(),
                pod_ip: "10.42.0.5".parse().unwrap(),
                pod_ip_v6: None,
                host_ip6: None,
                now: t(0),
            },
            &Seen::default(),
        )
        .unwrap();
        let s: PodStatus = serde_json::from_value(v).unwrap();
        assert_eq!(phase(&s), "Running");
        let c = &s.container_statuses.as_ref().unwrap()[0];
        let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = c.last_state.clone().unwrap().terminated.unwrap();
        assert_eq!(last.exit_code, 1);
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_change() {
        let mut p = pod("Always", &[], &["web"]);
        let before = Time(t(-100));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                last_transition_time: Some(before.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let s = status(&p, &[]);
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(before));
        let s = status(&p, &[running("web")]);
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(Time(t(0))));
    }

    #[test]
    fn an_evicted_pod_is_failed_with_a_disruption_target() {
        let p = pod("Always", &[], &["web"]);
        let f = Failure {
            reason: "Evicted",
            message: "The node was low on resource: memory.".into(),
            grace: None,
        };
        let s = status_with(&p, &[running("web")], &Seen::default(), Some(&f));
        assert_eq!(phase(&s), "Failed");
        assert_eq!(s.reason.as_deref(), Some("Evicted"));
        let d = cond(&s, "DisruptionTarget");
        assert_eq!(
            (d.status.as_str(), d.reason.as_deref(), d.message.as_deref()),
            (
                "True",
                Some("TerminationByKubelet"),
                Some("The node was low on resource: memory.")
            )
        );
    }
}
