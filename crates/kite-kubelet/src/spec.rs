//! The OCI runtime spec of one container: the image's config under the pod's and
//! container's settings (command and args with `$(VAR)` expansion, env, working dir, user,
//! security context, resources), joined to the pod's pinned namespaces, in a cgroup under
//! `/kite/kubepods/<qos>/pod<uid>/`. Validated by parsing into `oci_spec::runtime::Spec`.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// containerd's default capability set for containers.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The file a container's `terminationMessagePath` is bound to, one per container instance.
pub fn termination_log(pod_dir: &Path, name: &str, container_id: &str) -> std::path::PathBuf {
    pod_dir
        .join("containers")
        .join(name)
        .join(format!("{container_id}.termination-log"))
}

/// The signal number of an image's `StopSignal` (`SIGQUIT`, `QUIT`, `3`); SIGTERM if unset
/// or unknown.
pub fn stop_signal(image: &ImageConfiguration) -> u32 {
    let Some(s) = image
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone())
    else {
        return 15;
    };
    if let Ok(n) = s.parse::<u32>() {
        return n;
    }
    let name = if s.starts_with("SIG") {
        s.clone()
    } else {
        format!("SIG{s}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as u32)
        .unwrap_or(15)
}

/// The `PATH` of a process whose image sets none: containerd's `oci.DefaultUnixEnv`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Expands `$(VAR)` from `env`; `$$(VAR)` is a literal `$(VAR)`; unknown names stay as
/// written, as upstream.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The process arguments, as upstream combines image and container.
pub fn args(
    c: &Container,
    img: &ImageConfiguration,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let cfg = img.config().clone().unwrap_or_default();
    let entry = cfg.entrypoint().clone().unwrap_or_default();
    let cmd = cfg.cmd().clone().unwrap_or_default();
    let x = |v: &Vec<String>| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (&c.command, &c.args) {
        (Some(command), Some(args)) => [x(command), x(args)].concat(),
        (Some(command), None) => x(command),
        (None, Some(args)) => [entry, x(args)].concat(),
        (None, None) => [entry, cmd].concat(),
    }
}

/// The CPU and memory parts of a container's OCI `linux.resources`, from its requests
/// and limits as upstream's kubelet computes them: what it is made with, and what an
/// in-place resize gives it (`resize`).
pub fn linux_resources(res: &k8s_openapi::api::core::v1::ResourceRequirements) -> Value {
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    let cpu_req = get(&res.requests, "cpu")
        .or(get(&res.limits, "cpu"))
        .and_then(|q| quantity_milli(&q));
    let shares = crate::cgroups::shares(cpu_req.unwrap_or(0).into());
    let mut resources = json!({"cpu": {"shares": shares}});
    match get(&res.limits, "cpu").and_then(|q| quantity_milli(&q)) {
        Some(m) => {
            resources["cpu"]["quota"] = json!(crate::cgroups::quota(m.into()));
            resources["cpu"]["period"] = json!(100000u64);
        }
        // No quota: -1 lifts one an earlier resize set (runc leaves an absent field).
        None => resources["cpu"]["quota"] = json!(-1),
    }
    if let Some(b) = get(&res.limits, "memory").and_then(|q| quantity_bytes(&q)) {
        // No swap beyond the limit, as upstream's kubelet without swap support.
        resources["memory"] = json!({"limit": b, "swap": b});
    }
    resources
}

fn quantity_milli(q: &str) -> Option<i64> {
    kite_runtime::quantity::parse_milli(q).map(|v| v as i64)
}

fn quantity_bytes(q: &str) -> Option<i64> {
    kite_runtime::quantity::parse(q).map(|v| v as i64)
}

/// runAsNonRoot: the container must not run as uid 0, by its securityContext or the
/// image's user, as upstream's kubelet verifies before creating it.
pub fn check_non_root(pod: &Pod, c: &Container, image: &ImageConfiguration) -> Result<(), String> {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
        return Ok(());
    }
    let uid = match sc.run_as_user.or(psc.run_as_user) {
        Some(u) => u,
        None => {
            let user = image
                .config()
                .as_ref()
                .and_then(|c| c.user().clone())
                .unwrap_or_default();
            let name = user.split(':').next().unwrap_or_default();
            if name.is_empty() {
                0
            } else {
                name.parse::<i64>().map_err(|_| {
                    format!("container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root")
                })?
            }
        }
    };
    if uid == 0 {
        let pod_name = format!(
            "{}_{}({})",
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.uid.clone().unwrap_or_default()
        );
        return Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod_name}\", container: {})",
            c.name
        ));
    }
    Ok(())
}

pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfiguration,
    /// Fully resolved environment, image env first, in order.
    pub env: Vec<(String, String)>,
    pub pod_dir: &'a Path,
    pub sandbox: &'a crate::sandbox::Sandbox,
    pub container_id: &'a str,
    /// Who the process runs as ([`crate::users::resolve`]).
    pub identity: &'a crate::users::Identity,
    /// The container's volume mounts ([`crate::volumes::Ready::mounts`]).
    pub volume_mounts: Vec<serde_json::Value>,
    /// The PID namespace to join (an ephemeral container's target's), else a new one.
    pub pid_ns: Option<std::path::PathBuf>,
}

pub fn build(i: &Inputs) -> Result<Vec<u8>> {
    let c = i.container;
    let pod_spec = i.pod.spec.clone().unwrap_or_default();
    let env_map: BTreeMap<String, String> = i.env.iter().cloned().collect();
    let cfg = i.image.config().clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);

    let crate::users::Identity { uid, gid, groups } = i.identity;

    let mut caps: Vec<String> = if privileged {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if let Some(cs) = &sc.capabilities {
        let norm = |s: &String| {
            let u = s.to_uppercase();
            if u.starts_with("CAP_") {
                u
            } else {
                format!("CAP_{u}")
            }
        };
        let drops: Vec<String> = cs.drop.iter().flatten().map(norm).collect();
        if drops.iter().any(|d| d == "CAP_ALL") {
            caps.clear();
        } else {
            caps.retain(|c| !drops.contains(c));
        }
        for a in cs.add.iter().flatten().map(norm) {
            if a == "CAP_ALL" {
                caps = all_caps();
            } else if !caps.contains(&a) {
                caps.push(a);
            }
        }
    }

    let mut args = args(c, i.image, &env_map);
    if args.is_empty() {
        anyhow::bail!(
            "no command specified: the image has no entrypoint or cmd and the container sets none"
        );
    }
    if args[0].is_empty() {
        args[0] = "/bin/sh".into();
    }
    let cwd = c
        .working_dir
        .clone()
        .or(cfg.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let env: Vec<String> = i.env.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    for f in ["hosts", "hostname", "resolv.conf"] {
        // A volume mounted there wins, as upstream.
        if crate::volumes::Ready::mounts_at(c, &format!("/etc/{f}")) {
            continue;
        }
        mounts.push(json!({"destination": format!("/etc/{f}"), "type": "bind",
            "source": i.sandbox.file(f), "options": ["rbind", "rprivate", "rw"]}));
    }
    let term_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let term_file = termination_log(i.pod_dir, &c.name, i.container_id);
    if let Some(d) = term_file.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&term_file, b"")?;
    // Writable by whichever user the container runs as, as upstream's kubelet makes it.
    std::fs::set_permissions(
        &term_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
    )?;
    mounts.push(json!({"destination": term_path, "type": "bind", "source": term_file, "options": ["rbind", "rprivate", "rw"]}));
    mounts.extend(i.volume_mounts.iter().cloned());

    let mut resources = linux_resources(&c.resources.clone().unwrap_or_default());
    resources["devices"] = json!([{"allow": false, "access": "rwm"}]);

    let ns = |t: &str, path: Option<&Path>| match path {
        Some(p) => json!({"type": t, "path": p}),
        None => json!({"type": t}),
    };
    let host_network = pod_spec.host_network.unwrap_or(false);
    let mut namespaces = vec![
        ns("pid", i.pid_ns.as_deref()),
        ns("mount", None),
        ns("ipc", Some(&i.sandbox.path("ipc"))),
    ];
    if !host_network {
        namespaces.push(ns("network", Some(&i.sandbox.path("net"))));
        namespaces.push(ns("uts", Some(&i.sandbox.path("uts"))));
    }
    let pod_uid = i.pod.metadata.uid.clone().unwrap_or_default();
    let tty = c.tty == Some(true);
    let mut env = env;
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As containerd's CRI (`WithTTY`): a terminal gets a terminal type.
        env.push("TERM=xterm".to_string());
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": !sc.allow_privilege_escalation.unwrap_or(true) && !privileged,
            "oomScoreAdj": crate::cgroups::oom_score_adj(i.pod, c),
        },
        "root": {"path": "rootfs", "readonly": sc.read_only_root_filesystem.unwrap_or(false)},
        "hostname": crate::pods::pod_hostname(i.pod),
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.pod.uid": pod_uid,
            "io.kubernetes.container.name": c.name,
            "io.containerd.runc.v2.group": shim_group(&pod_uid),
        },
        "linux": {
            "cgroupsPath": format!("{}/{}", crate::cgroups::pod_cgroup(i.pod), i.container_id),
            "namespaces": namespaces,
            "resources": resources,
            "maskedPaths": if privileged { json!([]) } else { json!(oci_spec::runtime::get_default_maskedpaths()) },
            "readonlyPaths": if privileged { json!([]) } else { json!(oci_spec::runtime::get_default_readonly_paths()) },
        },
    });
    let mut spec = spec;
    if host_network {
        spec.as_object_mut().expect("object").remove("hostname");
    }
    // The pod's sysctls (the API server admits only namespaced ones), set by runc in the
    // container's namespaces, which are the pod's.
    let sysctls: serde_json::Map<String, Value> = pod_spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, Value::String(s.value)))
        .collect();
    if !sysctls.is_empty() {
        spec["linux"]["sysctl"] = Value::Object(sysctls);
    }
    let typed: oci_spec::runtime::Spec = serde_json::from_value(spec.clone())
        .context("the runtime spec kite built does not parse as OCI (a kite bug)")?;
    Ok(serde_json::to_vec(&typed)?)
}

fn all_caps() -> Vec<String> {
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
    .iter()
    .map(|c| format!("CAP_{c}"))
    .collect()
}

/// How many runc shims a node's pods share at most.
pub const SHIM_GROUPS: u32 = 8;

/// The runc shim a pod's containers run under (the runc v2 shim's group annotation).
/// Every container of a pod (init containers, sidecars, app containers) has the same
/// one; pods are spread over [`SHIM_GROUPS`] shims by a stable hash of their uid.
/// Upstream's CRI runs a shim per pod: each is a Go daemon of about 2.5 MiB PSS and two
/// process start-ups, so at 100 pods the shims alone held 254 MiB against 45 MiB for
/// eight, and cost 6–11 % more CPU to start the pods (docs/benchmarks.md). The price:
/// a shim that dies now touches its share of the node's pods, not one pod.
pub fn shim_group(pod_uid: &str) -> String {
    // FNV-1a: the same uid gives the same group in every kite version.
    let h = pod_uid.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("kite-shim-{}", h % SHIM_GROUPS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pods_spread_over_a_few_shims_and_keep_theirs() {
        let uid = "0b6f3c52-5d0e-4b8e-9b1a-6f1f4a3e2c11";
        assert_eq!(super::shim_group(uid), super::shim_group(uid));
        let groups: std::collections::HashSet<String> = (0..200)
            .map(|i| super::shim_group(&format!("{i:08x}-0000-4000-8000-000000000000")))
            .collect();
        assert_eq!(groups.len(), super::SHIM_GROUPS as usize, "{groups:?}");
    }

    use super::*;

    #[test]
    fn expands_like_upstream() {
        let env: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("é$(A)", &env), "é1");
    }

    #[test]
    fn command_and_args_combine_as_upstream() {
        let img: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/e"], "Cmd": ["c"]},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let env = BTreeMap::new();
        let c = |cmd: Option<Vec<&str>>, a: Option<Vec<&str>>| Container {
            command: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            args: a.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert_eq!(args(&c(None, None), &img, &env), ["/e", "c"]);
        assert_eq!(args(&c(None, Some(vec!["x"])), &img, &env), ["/e", "x"]);
        assert_eq!(args(&c(Some(vec!["/m"]), None), &img, &env), ["/m"]);
        assert_eq!(
            args(&c(Some(vec!["/m"]), Some(vec!["y"])), &img, &env),
            ["/m", "y"]
        );
    }
}
