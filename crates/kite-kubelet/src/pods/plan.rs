//! What the pod worker does next with a pod's containers, decided from the pod's spec and
//! what the runtime has (upstream's `computePodActions`), and how long a crashed container
//! waits before its next attempt. Pure: the pod worker carries the steps out ([`run`]),
//! and every rule here has a unit test, some against the fake runtime.

use crate::containers::{Info, State};
use k8s_openapi::api::core::v1::{Container, EphemeralContainer, PodSpec};
use std::borrow::Cow;
use std::time::Duration;

/// The longest crash back-off (upstream's MaxContainerBackOff).
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The first crash back-off, doubled on each further crash.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// A container that ran this long before it exited starts again without a back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// One thing to do with a pod's containers, in order.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// Start a new attempt of the container (unless its crash back-off still runs).
    /// `blocking`: if it does not start now, nothing after it may start in this pass.
    Start {
        /// Boxed: an ephemeral container is converted, so owned.
        container: Box<Cow<'a, Container>>,
        init: bool,
        blocking: bool,
    },
    /// Stop this running sidecar: the app containers are done for good.
    StopSidecar(&'a Info),
}

/// An init container with restartPolicy Always: a sidecar that runs beside the app
/// containers.
pub(crate) fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The pod's restartPolicy, defaulted as the API does.
pub(crate) fn restart_policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

/// The latest attempt of container `name`.
pub(crate) fn latest<'a>(have: &'a [Info], name: &str) -> Option<&'a Info> {
    have.iter()
        .filter(|c| c.name == name)
        .max_by_key(|c| c.attempt)
}

/// Whether every app container has exited and will not be started again.
pub(crate) fn app_containers_done(spec: &PodSpec, have: &[Info]) -> bool {
    let policy = restart_policy(spec);
    policy != "Always"
        && !spec.containers.is_empty()
        && spec
            .containers
            .iter()
            .all(|c| match latest(have, &c.name).map(|i| &i.state) {
                Some(State::Exited { code, .. }) => policy == "Never" || *code == 0,
                _ => false,
            })
}

/// An ephemeral container as the container it runs (the same fields, less the target).
pub(crate) fn ephemeral_as_container(e: &EphemeralContainer) -> Option<Container> {
    let mut v = serde_json::to_value(e).ok()?;
    v.as_object_mut()?.remove("targetContainerName");
    serde_json::from_value(v).ok()
}

/// The steps that take the pod's containers toward its spec, in order:
/// - init containers one at a time, each after the one before exited 0; a sidecar (an
///   init container with restartPolicy Always) only has to have started, and is started
///   again whenever it stops, whatever the pod's restartPolicy;
/// - once the pod is initialized (an app container was ever made), the app containers
///   that are missing, or exited and restartable under the pod's restartPolicy;
/// - ephemeral containers, once each;
/// - when the app containers are done for good, the running sidecars are stopped, last
///   started first, so the pod can complete.
pub(crate) fn plan<'a>(spec: &'a PodSpec, have: &'a [Info]) -> Vec<Step<'a>> {
    let policy = restart_policy(spec);
    let mut steps = Vec::new();
    // Once an app container has been created, the pod has been initialized: a sidecar
    // that stops later is restarted without holding the app containers back.
    let initialized = spec
        .containers
        .iter()
        .any(|c| have.iter().any(|i| i.name == c.name));
    let done = app_containers_done(spec, have);
    for c in spec.init_containers.iter().flatten() {
        let state = latest(have, &c.name).map(|i| &i.state);
        if is_sidecar(c) {
            if !matches!(state, Some(State::Running { .. })) && !done {
                steps.push(Step::Start {
                    container: Box::new(Cow::Borrowed(c)),
                    init: true,
                    blocking: !initialized,
                });
            }
            continue;
        }
        match state {
            Some(State::Exited { code: 0, .. }) => continue,
            _ if initialized => continue,
            // This init container still runs, or failed for good: nothing after it.
            Some(State::Running { .. }) => return steps,
            Some(State::Exited { .. }) | Some(State::Created) if policy == "Never" => return steps,
            _ => {
                steps.push(Step::Start {
                    container: Box::new(Cow::Borrowed(c)),
                    init: true,
                    blocking: true,
                });
                return steps;
            }
        }
    }
    for c in &spec.containers {
        let restart = match latest(have, &c.name).map(|i| &i.state) {
            None | Some(State::Created) => true,
            Some(State::Running { .. }) => false,
            Some(State::Exited { code, .. }) => match policy {
                "Always" => true,
                "OnFailure" => *code != 0,
                _ => false,
            },
        };
        if restart {
            steps.push(Step::Start {
                container: Box::new(Cow::Borrowed(c)),
                init: false,
                blocking: false,
            });
        }
    }
    // Ephemeral containers (`kubectl debug`) start once and are never restarted.
    for e in spec.ephemeral_containers.iter().flatten() {
        if latest(have, &e.name).is_some() {
            continue;
        }
        if let Some(c) = ephemeral_as_container(e) {
            steps.push(Step::Start {
                container: Box::new(Cow::Owned(c)),
                init: false,
                blocking: false,
            });
        }
    }
    if done {
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .rev()
            .filter(|c| is_sidecar(c))
        {
            if let Some(i) =
                latest(have, &c.name).filter(|i| matches!(i.state, State::Running { .. }))
            {
                steps.push(Step::StopSidecar(i));
            }
        }
    }
    steps
}

/// A crashed container's back-off: how long it is in all, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    pub total: Duration,
    pub left: Duration,
}

/// The back-off before the next attempt after `last`, if there is still one to wait
/// (upstream: 10 s, doubled on each restart up to 5 min; none after 10 min of running).
pub(crate) fn backoff(last: &Info, now: jiff::Timestamp) -> Option<Backoff> {
    let State::Exited { at, .. } = &last.state else {
        return None;
    };
    let ran = match (last.created, at) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64().max(0.0),
        _ => 0.0,
    };
    if ran >= BACKOFF_RESET.as_secs_f64() {
        return None;
    }
    let total = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(last.attempt))
        .min(MAX_BACKOFF);
    let since = at
        .map(|e| Duration::from_secs_f64(now.duration_since(e).as_secs_f64().max(0.0)))
        .unwrap_or(total);
    (since < total).then(|| Backoff {
        total,
        left: total - since,
    })
}

/// Carries out the steps the pod worker's way (`W`: kite's pod worker, or a test's).
pub(crate) trait Worker {
    /// Starts a new attempt of `c`; the back-off to wait first, if it did not start.
    async fn start(&self, c: &Container, init: bool) -> anyhow::Result<Option<Duration>>;
    /// Stops a sidecar (its stop signal, the pod's grace period).
    async fn stop_sidecar(&self, i: &Info) -> anyhow::Result<()>;
}

/// Runs the steps in order; the soonest time the pod should be synced again, if a
/// container waits on its back-off (or on a pull).
pub(crate) async fn run(steps: Vec<Step<'_>>, w: &impl Worker) -> anyhow::Result<Option<Duration>> {
    let mut next: Option<Duration> = None;
    for step in steps {
        match step {
            Step::Start {
                container,
                init,
                blocking,
            } => {
                if let Some(d) = w.start(&container, init).await? {
                    next = Some(next.map_or(d, |n| n.min(d)));
                    if blocking {
                        break;
                    }
                }
            }
            Step::StopSidecar(i) => w.stop_sidecar(i).await?,
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::{self, FakeRuntime};
    use crate::runtime::Runtime;
    use k8s_openapi::api::core::v1::PodSpec;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Default::default()
        }
    }

    fn sidecar(name: &str) -> Container {
        Container {
            restart_policy: Some("Always".into()),
            ..container(name)
        }
    }

    fn pod_spec(policy: &str, init: &[Container], app: &[&str]) -> PodSpec {
        PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty()).then(|| init.to_vec()),
            containers: app.iter().map(|n| container(n)).collect(),
            ..Default::default()
        }
    }

    fn info(name: &str, attempt: u32, state: State) -> Info {
        fake::info("uid", name, attempt, state)
    }

    fn running(name: &str, attempt: u32) -> Info {
        info(name, attempt, State::Running { pid: 1 })
    }

    fn exited(name: &str, attempt: u32, code: i32) -> Info {
        info(
            name,
            attempt,
            State::Exited {
                code,
                at: Some(jiff::Timestamp::UNIX_EPOCH),
            },
        )
    }

    /// The steps as short strings: `start app`, `start* init` (blocking), `stop side`.
    fn steps(spec: &PodSpec, have: &[Info]) -> Vec<String> {
        plan(spec, have)
            .iter()
            .map(|s| match s {
                Step::Start {
                    container,
                    blocking,
                    ..
                } => format!(
                    "start{} {}",
                    if *blocking { "*" } else { "" },
                    container.name
                ),
                Step::StopSidecar(i) => format!("stop {}", i.name),
            })
            .collect()
    }

    #[test]
    fn a_new_pod_starts_its_app_containers() {
        let spec = pod_spec("Always", &[], &["a", "b"]);
        assert_eq!(steps(&spec, &[]), ["start a", "start b"]);
        assert!(steps(&spec, &[running("a", 0), running("b", 0)]).is_empty());
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_app() {
        let spec = pod_spec("Always", &[container("i1"), container("i2")], &["a"]);
        assert_eq!(steps(&spec, &[]), ["start* i1"]);
        assert!(steps(&spec, &[running("i1", 0)]).is_empty());
        assert_eq!(steps(&spec, &[exited("i1", 0, 0)]), ["start* i2"]);
        assert_eq!(
            steps(&spec, &[exited("i1", 0, 0), exited("i2", 0, 0)]),
            ["start a"]
        );
        // A failed init container is retried (not the next one) unless restartPolicy Never.
        assert_eq!(steps(&spec, &[exited("i1", 0, 1)]), ["start* i1"]);
        let never = pod_spec("Never", &[container("i1"), container("i2")], &["a"]);
        assert!(steps(&never, &[exited("i1", 0, 1)]).is_empty());
    }

    #[test]
    fn init_containers_are_not_rerun_once_the_pod_is_initialized() {
        // An app container exists: the init containers' later fate does not matter (as
        // after kite adopts a pod whose init containers were removed).
        let spec = pod_spec("Always", &[container("i1")], &["a"]);
        assert!(steps(&spec, &[running("a", 0)]).is_empty());
        assert!(steps(&spec, &[exited("i1", 0, 1), running("a", 0)]).is_empty());
    }

    #[test]
    fn restart_policy_decides_which_exited_containers_start_again() {
        let have = [exited("ok", 0, 0), exited("bad", 0, 2)];
        let always = pod_spec("Always", &[], &["ok", "bad"]);
        assert_eq!(steps(&always, &have), ["start ok", "start bad"]);
        let on_failure = pod_spec("OnFailure", &[], &["ok", "bad"]);
        assert_eq!(steps(&on_failure, &have), ["start bad"]);
        let never = pod_spec("Never", &[], &["ok", "bad"]);
        assert!(steps(&never, &have).is_empty());
        // Only the latest attempt counts.
        let have = [exited("ok", 0, 1), exited("ok", 1, 0)];
        assert!(steps(&pod_spec("OnFailure", &[], &["ok"]), &have).is_empty());
    }

    #[test]
    fn sidecars_start_before_the_next_init_container_and_restart_whatever_the_policy() {
        let spec = pod_spec("Never", &[sidecar("s"), container("i")], &["a"]);
        // Not yet initialized: a sidecar that cannot start holds the rest back.
        assert_eq!(steps(&spec, &[]), ["start* s", "start* i"]);
        assert_eq!(steps(&spec, &[running("s", 0)]), ["start* i"]);
        assert_eq!(
            steps(&spec, &[running("s", 0), exited("i", 0, 0)]),
            ["start a"]
        );
        // Initialized: a stopped sidecar is restarted beside the app, not blocking it.
        assert_eq!(
            steps(
                &spec,
                &[exited("s", 0, 1), exited("i", 0, 0), running("a", 0)]
            ),
            ["start s"]
        );
    }

    #[test]
    fn sidecars_stop_last_started_first_once_the_app_is_done() {
        let spec = pod_spec("Never", &[sidecar("s1"), sidecar("s2")], &["a"]);
        let have = [running("s1", 0), running("s2", 0), exited("a", 0, 1)];
        assert_eq!(steps(&spec, &have), ["stop s2", "stop s1"]);
        // A stopped sidecar is not started again then.
        let have = [exited("s1", 0, 137), running("s2", 0), exited("a", 0, 0)];
        assert_eq!(steps(&spec, &have), ["stop s2"]);
        // OnFailure: a failed app container is not done, so the sidecars keep running.
        let spec = pod_spec("OnFailure", &[sidecar("s1")], &["a"]);
        assert_eq!(
            steps(&spec, &[running("s1", 0), exited("a", 0, 1)]),
            ["start a"]
        );
    }

    #[test]
    fn ephemeral_containers_start_once() {
        let mut spec = pod_spec("Always", &[], &["a"]);
        spec.ephemeral_containers = Some(vec![EphemeralContainer {
            name: "debugger".into(),
            image: Some("busybox".into()),
            ..Default::default()
        }]);
        assert_eq!(steps(&spec, &[running("a", 0)]), ["start debugger"]);
        assert!(steps(&spec, &[running("a", 0), exited("debugger", 0, 0)]).is_empty());
    }

    #[test]
    fn crash_backoff_doubles_caps_and_resets_as_upstream() {
        let t0 = jiff::Timestamp::from_second(1_000_000).unwrap();
        let secs = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let crashed = |attempt: u32, ran: i64| Info {
            created: Some(t0),
            ..info(
                "a",
                attempt,
                State::Exited {
                    code: 1,
                    at: Some(secs(ran)),
                },
            )
        };
        let b = |attempt, ran, now| backoff(&crashed(attempt, ran), secs(now));
        let d = Duration::from_secs;
        assert_eq!(
            b(0, 1, 4),
            Some(Backoff {
                total: d(10),
                left: d(7)
            })
        );
        assert_eq!(b(0, 1, 11), None);
        assert_eq!(b(2, 1, 1).map(|b| b.total), Some(d(40)));
        assert_eq!(b(9, 1, 1).map(|b| b.total), Some(MAX_BACKOFF));
        assert_eq!(b(40, 1, 1).map(|b| b.total), Some(MAX_BACKOFF));
        // Ten minutes of running: no back-off at all.
        assert_eq!(b(5, 600, 601), None);
        // A running or never-started container has none.
        assert_eq!(backoff(&running("a", 3), t0), None);
    }

    /// A pod worker over the fake runtime: what `Kubelet` does, minus images, volumes
    /// and events.
    struct FakeWorker<'a> {
        rt: &'a FakeRuntime,
        have: Vec<Info>,
        now: jiff::Timestamp,
    }

    impl Worker for FakeWorker<'_> {
        async fn start(&self, c: &Container, _init: bool) -> anyhow::Result<Option<Duration>> {
            let last = latest(&self.have, &c.name);
            if let Some(b) = last.and_then(|l| backoff(l, self.now)) {
                return Ok(Some(b.left));
            }
            self.rt
                .start("uid", &c.name, last.map_or(0, |l| l.attempt + 1));
            Ok(None)
        }
        async fn stop_sidecar(&self, i: &Info) -> anyhow::Result<()> {
            self.rt.stop(&i.id, 15, Duration::ZERO).await
        }
    }

    /// One sync of the pod against the fake: list, plan, run.
    async fn sync(rt: &FakeRuntime, spec: &PodSpec, now: jiff::Timestamp) -> Option<Duration> {
        let have = rt.list("uid").await.unwrap();
        let w = FakeWorker {
            rt,
            have: have.clone(),
            now,
        };
        run(plan(spec, &have), &w).await.unwrap()
    }

    #[tokio::test]
    async fn a_crashing_container_waits_out_its_backoff_against_the_runtime() {
        let rt = FakeRuntime::default();
        let spec = pod_spec("Always", &[], &["a"]);
        let t0 = rt.now();
        assert_eq!(sync(&rt, &spec, t0).await, None);
        assert_eq!(rt.started(), ["a#0"]);
        rt.exit("uid", "a", 1, t0);
        // 3 s after the crash: 7 s left, nothing started.
        let t3 = t0 + jiff::SignedDuration::from_secs(3);
        assert_eq!(sync(&rt, &spec, t3).await, Some(Duration::from_secs(7)));
        assert_eq!(rt.started(), ["a#0"]);
        let t10 = t0 + jiff::SignedDuration::from_secs(10);
        assert_eq!(sync(&rt, &spec, t10).await, None);
        assert_eq!(rt.started(), ["a#0", "a#1"]);
        rt.exit("uid", "a", 1, t10);
        assert_eq!(
            sync(&rt, &spec, t10).await,
            Some(Duration::from_secs(20)),
            "the second back-off is twice the first"
        );
    }

    #[tokio::test]
    async fn init_sidecar_and_app_run_to_completion_against_the_runtime() {
        let rt = FakeRuntime::default();
        let spec = pod_spec("Never", &[sidecar("proxy"), container("setup")], &["job"]);
        let t = rt.now();
        sync(&rt, &spec, t).await;
        assert_eq!(rt.started(), ["proxy#0", "setup#0"]);
        // setup runs: nothing more until it exits 0.
        sync(&rt, &spec, t).await;
        assert_eq!(rt.started(), ["proxy#0", "setup#0"]);
        rt.exit("uid", "setup", 0, t);
        sync(&rt, &spec, t).await;
        assert_eq!(rt.started(), ["proxy#0", "setup#0", "job#0"]);
        // The sidecar crashes while the job runs: restarted at once, policy Never or not.
        rt.exit("uid", "proxy", 2, t - jiff::SignedDuration::from_secs(60));
        sync(&rt, &spec, t).await;
        assert_eq!(rt.started(), ["proxy#0", "setup#0", "job#0", "proxy#1"]);
        // The job ends: the sidecar is stopped, and nothing is started again.
        rt.exit("uid", "job", 0, t);
        sync(&rt, &spec, t).await;
        assert_eq!(rt.stopped(), ["proxy#1"]);
        sync(&rt, &spec, t).await;
        assert_eq!(rt.started().len(), 4);
    }
}
