//! CNI delegation: when the user has put a network configuration in the CNI config
//! directory (`--cni-conf-dir`, default `/etc/cni/net.d`), pods get their network from
//! those plugins (`--cni-bin-dir`, default `/opt/cni/bin`) instead of kite's built-in
//! bridge, as the CNI spec has a runtime call them: ADD when the sandbox is made, CHECK
//! when a restarted kite adopts it, DEL when it goes.
//!
//! As libcni does, the configuration is the first `*.conflist`, `*.conf` or `*.json` file
//! in lexical order, read afresh for each ADD; the configuration an ADD used and its
//! result are kept under `<data-dir>/agent/cni/<pod uid>.json`, so DEL and CHECK give the
//! plugins what ADD did, even after the file changed or kite restarted.

use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The interface the plugins make in the pod.
pub const IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the CNI config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("failed to find plugin {plugin:?} in path {path}")]
    NoPlugin { plugin: String, path: String },
    #[error("plugin type={plugin:?} failed ({command}): {msg}")]
    Plugin {
        plugin: String,
        command: &'static str,
        msg: String,
    },
    #[error("the CNI result has no IPv4 address: {0}")]
    NoAddress(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The user's plugins and where kite keeps what it asked of them.
#[derive(Debug)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    state_dir: PathBuf,
    /// The attachment files already read (every pod sync asks for its address).
    cache: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Attachment>>>,
}

/// A network configuration list (a `.conf` is made a list of one).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

/// Who the network is for: CNI_CONTAINERID and the K8S_* CNI_ARGS.
pub struct PodRef<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// One hostPort for plugins with the `portMappings` capability.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// What ADD left, for DEL and CHECK.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Attachment {
    conf: Value,
    netns: PathBuf,
    namespace: String,
    name: String,
    runtime_config: Value,
    result: Value,
}

impl Cni {
    pub fn new(conf_dir: &Path, bin_dirs: &[PathBuf], data_dir: &Path) -> Self {
        Cni {
            conf_dir: conf_dir.to_path_buf(),
            bin_dirs: bin_dirs.to_vec(),
            state_dir: data_dir.join("agent").join("cni"),
            cache: Default::default(),
        }
    }

    /// The configuration in effect: `Ok(None)` when the directory holds none (kite's
    /// built-in network applies).
    pub fn config(&self) -> Result<Option<ConfList>, Error> {
        let Ok(rd) = std::fs::read_dir(&self.conf_dir) else {
            return Ok(None);
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
            })
            .collect();
        files.sort();
        match files.first() {
            Some(f) => parse_conf(f).map(Some),
            None => Ok(None),
        }
    }

    fn state_file(&self, uid: &str) -> PathBuf {
        self.state_dir.join(format!("{uid}.json"))
    }

    fn attachment(&self, uid: &str) -> Option<std::sync::Arc<Attachment>> {
        if let Some(a) = self.cache.lock().unwrap().get(uid) {
            return Some(a.clone());
        }
        let text = std::fs::read_to_string(self.state_file(uid)).ok()?;
        let a = std::sync::Arc::new(serde_json::from_str::<Attachment>(&text).ok()?);
        self.cache
            .lock()
            .unwrap()
            .insert(uid.to_string(), a.clone());
        Some(a)
    }

    /// The pod's address, from the result its ADD returned.
    pub fn pod_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        first_ipv4(&self.attachment(uid)?.result)
    }

    /// Whether the plugins that plumbed this pod map its hostPorts.
    pub fn maps_ports(&self, uid: &str) -> bool {
        self.attachment(uid)
            .and_then(|a| parse_value(&a.conf, Path::new("(recorded)")).ok())
            .is_some_and(|c| Self::handles_port_mappings(&c))
    }

    /// Whether the configuration's plugins map hostPorts themselves.
    pub fn handles_port_mappings(conf: &ConfList) -> bool {
        conf.plugins.iter().any(|p| {
            p.get("capabilities")
                .and_then(|c| c.get("portMappings"))
                .and_then(Value::as_bool)
                == Some(true)
        })
    }

    /// ADD through every plugin of the list in order, each given the previous result;
    /// on failure the plugins that ran are undone with DEL. Returns the pod's address.
    pub async fn add(
        &self,
        conf: &ConfList,
        pod: &PodRef<'_>,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Ipv4Addr, Error> {
        let runtime_config = json!({ "portMappings": ports });
        let mut prev: Option<Value> = None;
        for plugin in &conf.plugins {
            let stdin = plugin_conf(conf, plugin, prev.as_ref(), &runtime_config);
            match self.exec("ADD", &stdin, pod, netns).await {
                Ok(out) => prev = Some(out),
                Err(e) => {
                    let att = Attachment {
                        conf: conf_value(conf),
                        netns: netns.to_path_buf(),
                        namespace: pod.namespace.into(),
                        name: pod.name.into(),
                        runtime_config: runtime_config.clone(),
                        result: prev.clone().unwrap_or(Value::Null),
                    };
                    let _ = self.del_with(&att, pod.uid).await;
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let ip = first_ipv4(&result).ok_or_else(|| Error::NoAddress(result.to_string()))?;
        let att = Attachment {
            conf: conf_value(conf),
            netns: netns.to_path_buf(),
            namespace: pod.namespace.into(),
            name: pod.name.into(),
            runtime_config,
            result,
        };
        std::fs::create_dir_all(&self.state_dir)?;
        let tmp = self.state_dir.join(format!(".{}.tmp", pod.uid));
        std::fs::write(&tmp, serde_json::to_vec(&att).unwrap_or_default())?;
        std::fs::rename(&tmp, self.state_file(pod.uid))?;
        self.cache
            .lock()
            .unwrap()
            .insert(pod.uid.to_string(), std::sync::Arc::new(att));
        Ok(ip)
    }

    /// DEL through the plugins in reverse order with the configuration ADD used; a pod
    /// ADD never ran for is nothing to do. The record goes only once DEL succeeded.
    pub async fn del(&self, uid: &str) -> Result<(), Error> {
        let Some(att) = self.attachment(uid) else {
            return Ok(());
        };
        self.del_with(&att, uid).await?;
        self.cache.lock().unwrap().remove(uid);
        let _ = std::fs::remove_file(self.state_file(uid));
        Ok(())
    }

    async fn del_with(&self, att: &Attachment, uid: &str) -> Result<(), Error> {
        let conf = parse_value(&att.conf, Path::new("(recorded)"))?;
        let pod = PodRef {
            uid,
            namespace: &att.namespace,
            name: &att.name,
        };
        let prev = (!att.result.is_null() && version_at_least(&conf.cni_version, 0, 4))
            .then_some(&att.result);
        // A pod whose namespace is already gone still has its addresses released: the
        // spec has plugins accept a DEL with a missing netns.
        let netns = if att.netns.exists() {
            att.netns.clone()
        } else {
            PathBuf::new()
        };
        for plugin in conf.plugins.iter().rev() {
            let stdin = plugin_conf(&conf, plugin, prev, &att.runtime_config);
            self.exec("DEL", &stdin, &pod, &netns).await?;
        }
        Ok(())
    }

    /// CHECK (spec 0.4.0 and later; earlier versions have none): whether the pod's
    /// network is still as ADD made it.
    pub async fn check(&self, uid: &str) -> Result<(), Error> {
        let Some(att) = self.attachment(uid) else {
            return Ok(());
        };
        let conf = parse_value(&att.conf, Path::new("(recorded)"))?;
        if !version_at_least(&conf.cni_version, 0, 4) {
            return Ok(());
        }
        let pod = PodRef {
            uid,
            namespace: &att.namespace,
            name: &att.name,
        };
        for plugin in &conf.plugins {
            let stdin = plugin_conf(&conf, plugin, Some(&att.result), &att.runtime_config);
            self.exec("CHECK", &stdin, &pod, &att.netns).await?;
        }
        Ok(())
    }

    fn find_plugin(&self, ty: &str) -> Result<PathBuf, Error> {
        let bad = ty.is_empty() || ty.contains('/') || ty == "." || ty == "..";
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| !bad && p.is_file())
            .ok_or_else(|| Error::NoPlugin {
                plugin: ty.into(),
                path: self.path_env(),
            })
    }

    fn path_env(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    async fn exec(
        &self,
        command: &'static str,
        stdin: &Value,
        pod: &PodRef<'_>,
        netns: &Path,
    ) -> Result<Value, Error> {
        let ty = stdin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bin = self.find_plugin(ty)?;
        let fail = |msg: String| Error::Plugin {
            plugin: ty.to_string(),
            command,
            msg,
        };
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.uid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", self.path_env())
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.uid, pod.uid
                ),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut w) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            w.write_all(stdin.to_string().as_bytes()).await?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer in {}s", PLUGIN_TIMEOUT.as_secs())))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // The spec's error object on stdout; else whatever the plugin said.
            let msg = serde_json::from_str::<Value>(&stdout)
                .ok()
                .and_then(|v| {
                    let msg = v.get("msg")?.as_str()?.to_string();
                    Some(match v.get("details").and_then(Value::as_str) {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg,
                    })
                })
                .unwrap_or_else(|| {
                    let e = String::from_utf8_lossy(&out.stderr);
                    let t = if stdout.trim().is_empty() {
                        e.trim().to_string()
                    } else {
                        stdout.trim().to_string()
                    };
                    if t.is_empty() {
                        format!("exit status {}", out.status)
                    } else {
                        t
                    }
                });
            return Err(fail(msg));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| fail(format!("unreadable result: {e}")))
    }
}

/// What a plugin reads on stdin: its own object, with the list's name and version, the
/// previous plugin's result, and runtimeConfig for the capabilities it declares.
fn plugin_conf(
    conf: &ConfList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    runtime_config: &Value,
) -> Value {
    let mut m = plugin.clone();
    m.insert("name".into(), Value::String(conf.name.clone()));
    m.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    if let Some(p) = prev {
        m.insert("prevResult".into(), p.clone());
    }
    let caps = plugin.get("capabilities").and_then(Value::as_object);
    let mut rc = Map::new();
    if let (Some(caps), Some(all)) = (caps, runtime_config.as_object()) {
        for (k, v) in all {
            if caps.get(k).and_then(Value::as_bool) == Some(true) {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        m.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(m)
}

fn conf_value(c: &ConfList) -> Value {
    json!({"name": c.name, "cniVersion": c.cni_version, "plugins": c.plugins})
}

/// Reads a `.conflist`, or a single-plugin `.conf` / `.json`.
pub fn parse_conf(path: &Path) -> Result<ConfList, Error> {
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let v = if v.get("plugins").is_none() {
        // A single plugin: its name and version belong to the list.
        let mut single = v.as_object().cloned().unwrap_or_default();
        let name = single.remove("name").unwrap_or(Value::Null);
        let ver = single.remove("cniVersion").unwrap_or(Value::Null);
        json!({"name": name, "cniVersion": ver, "plugins": [single]})
    } else {
        v
    };
    parse_value(&v, path)
}

fn parse_value(v: &Value, path: &Path) -> Result<ConfList, Error> {
    let bad = |msg: &str| Error::Config {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("name: missing"))?;
    let cni_version = v
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.2.0")
        .to_string();
    let plugins: Vec<Map<String, Value>> = v
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("plugins: not a list"))?
        .iter()
        .map(|p| {
            p.as_object()
                .cloned()
                .ok_or_else(|| bad("plugins: an entry is not an object"))
        })
        .collect::<Result<_, _>>()?;
    if plugins.is_empty() {
        return Err(bad("plugins: empty"));
    }
    for p in &plugins {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad("plugins: an entry has no type"));
        }
    }
    Ok(ConfList {
        file: path.to_path_buf(),
        name: name.to_string(),
        cni_version,
        plugins,
    })
}

fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The first IPv4 address of a result: `ips[].address` (0.3.0 and later) or `ip4.ip`.
fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    let parse = |s: &str| s.split('/').next()?.parse::<Ipv4Addr>().ok();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        if let Some(ip) = ips
            .iter()
            .filter_map(|i| i.get("address").and_then(Value::as_str))
            .find_map(parse)
        {
            return Some(ip);
        }
    }
    result
        .get("ip4")
        .and_then(|i| i.get("ip"))
        .and_then(Value::as_str)
        .and_then(parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kite-cni-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn picks_the_first_config_in_lexical_order_and_wraps_a_single_plugin() {
        let d = dir();
        let cni = Cni::new(&d, &[], &d);
        assert!(cni.config().unwrap().is_none());
        std::fs::write(d.join("README"), "not a config").unwrap();
        std::fs::write(
            d.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("10-a.conf"),
            r#"{"cniVersion":"0.3.1","name":"a","type":"bridge","bridge":"kitecni0"}"#,
        )
        .unwrap();
        let c = cni.config().unwrap().unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0]["bridge"], "kitecni0");
        assert!(c.plugins[0].get("name").is_none());
        assert!(!Cni::handles_port_mappings(&c));
        std::fs::remove_file(d.join("10-a.conf")).unwrap();
        let c = cni.config().unwrap().unwrap();
        assert_eq!(c.name, "b");
        assert!(Cni::handles_port_mappings(&c));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_config_names_the_file_and_the_key() {
        let d = dir();
        let f = d.join("10-x.conflist");
        std::fs::write(
            &f,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"bridge":"b"}]}"#,
        )
        .unwrap();
        let e = parse_conf(&f).unwrap_err().to_string();
        assert!(e.contains("10-x.conflist") && e.contains("no type"), "{e}");
        std::fs::write(&f, "{").unwrap();
        assert!(parse_conf(&f).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn plugin_input_carries_name_version_prev_result_and_declared_capabilities() {
        let c = ConfList {
            file: PathBuf::new(),
            name: "net".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
        };
        let plain: Map<String, Value> = serde_json::from_str(r#"{"type":"bridge"}"#).unwrap();
        let pm: Map<String, Value> =
            serde_json::from_str(r#"{"type":"portmap","capabilities":{"portMappings":true}}"#)
                .unwrap();
        let rc =
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        let prev = json!({"ips": [{"address": "10.1.0.5/24"}]});
        let a = plugin_conf(&c, &plain, None, &rc);
        assert_eq!(a["name"], "net");
        assert_eq!(a["cniVersion"], "1.0.0");
        assert!(a.get("runtimeConfig").is_none() && a.get("prevResult").is_none());
        let b = plugin_conf(&c, &pm, Some(&prev), &rc);
        assert_eq!(b["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(b["prevResult"], prev);
    }

    #[test]
    fn reads_addresses_from_every_result_version() {
        assert_eq!(
            first_ipv4(&json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/24"}]})),
            Some(Ipv4Addr::new(10, 1, 0, 5))
        );
        assert_eq!(
            first_ipv4(&json!({"ip4": {"ip": "10.2.0.7/16"}})),
            Some(Ipv4Addr::new(10, 2, 0, 7))
        );
        assert_eq!(first_ipv4(&json!({})), None);
        assert!(version_at_least("0.4.0", 0, 4));
        assert!(version_at_least("1.0.0", 0, 4));
        assert!(!version_at_least("0.3.1", 0, 4));
    }

    #[tokio::test]
    async fn runs_plugins_in_order_and_undoes_on_failure() {
        // Two fake plugins, shell scripts that log their command and answer as the spec
        // says; the second fails ADD when told to.
        let d = dir();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = d.join("log");
        let script = |name: &str, fail_add: bool| {
            let p = bin.join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\ninput=$(cat)\necho \"{name} $CNI_COMMAND $CNI_IFNAME $CNI_ARGS\" >> '{log}'\n\
                     if [ \"$CNI_COMMAND\" = ADD ]; then\n\
                       if {fail}; then echo '{{\"code\":11,\"msg\":\"no luck\",\"details\":\"try later\"}}'; exit 1; fi\n\
                       echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.4/24\"}}]}}'\nfi\n",
                    log = log.display(),
                    fail = if fail_add { "true" } else { "false" },
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("one", false);
        script("two", false);
        script("bad", true);
        let conf_dir = d.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let cni = Cni::new(&conf_dir, std::slice::from_ref(&bin), &d);
        let pod = PodRef {
            uid: "u1",
            namespace: "ns",
            name: "p",
        };
        let conf = ConfList {
            file: PathBuf::new(),
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                serde_json::from_str(r#"{"type":"one"}"#).unwrap(),
                serde_json::from_str(r#"{"type":"two"}"#).unwrap(),
            ],
        };
        let ip = cni
            .add(&conf, &pod, Path::new("/proc/self/ns/net"), &[])
            .await
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 4));
        assert_eq!(cni.pod_ip("u1"), Some(ip));
        cni.check("u1").await.unwrap();
        cni.del("u1").await.unwrap();
        assert_eq!(cni.pod_ip("u1"), None);
        let got = std::fs::read_to_string(&log).unwrap();
        let cmds: Vec<String> = got
            .lines()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "one ADD",
                "two ADD",
                "one CHECK",
                "two CHECK",
                "two DEL",
                "one DEL"
            ]
        );
        assert!(got.contains("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"));

        std::fs::remove_file(&log).unwrap();
        let conf = ConfList {
            plugins: vec![
                serde_json::from_str(r#"{"type":"one"}"#).unwrap(),
                serde_json::from_str(r#"{"type":"bad"}"#).unwrap(),
            ],
            ..conf
        };
        let e = cni
            .add(&conf, &pod, Path::new("/proc/self/ns/net"), &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no luck: try later") && e.contains("\"bad\""),
            "{e}"
        );
        let got = std::fs::read_to_string(&log).unwrap();
        let cmds: Vec<&str> = got
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(cmds, ["ADD", "ADD", "DEL", "DEL"], "{got}");
        assert_eq!(cni.pod_ip("u1"), None);
        let e = cni
            .add(
                &ConfList {
                    plugins: vec![serde_json::from_str(r#"{"type":"missing"}"#).unwrap()],
                    ..conf
                },
                &pod,
                Path::new("/proc/self/ns/net"),
                &[],
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed to find plugin \"missing\""), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
