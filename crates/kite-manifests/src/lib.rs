//! Auto-deploying manifests, as K3s's deploy controller: every YAML or JSON file in the
//! server's manifests folder (`<data-dir>/server/manifests`) is applied at start and
//! whenever it changes. Unlike K3s, objects are pruned: those of a deleted file, and those
//! a file no longer lists. `NAME.skip` beside a file turns it off (its objects stay).
//!
//! Each file has a record, the ConfigMap `kube-system/kite-manifest-<name>`: its checksum
//! and the objects it made. Events on the record tell how each apply went
//! (`AppliedManifest`, `ApplyManifestFailed`), and a log line names the file. The objects
//! carry the label `kite.io/manifest: <record>` and, as `kubectl apply` keeps its
//! last-applied-configuration, the file's version of them in `kite.io/last-applied`: a
//! field removed from the file is removed from the object, and fields the file never set
//! are left alone. A file that fails is retried every 10 s; the others still apply.

pub mod files;
pub mod merge;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the records live.
pub const NAMESPACE: &str = "kube-system";
/// On every object a file made, and on its record: the record's name.
pub const LABEL: &str = "kite.io/manifest";
/// The file's version of an object, for the next apply's patch.
pub const LAST_APPLIED: &str = "kite.io/last-applied";
const COMPONENT: &str = "kite-manifests";
const RETRY: Duration = Duration::from_secs(10);

/// What the controller watches.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// How often the folder is read.
    pub interval: Duration,
}

/// The last outcome of each file, by file name.
#[derive(Default)]
struct FileState {
    checksum: String,
    /// Set while the file fails: when to try again, and the error last reported.
    retry_at: Option<Instant>,
    error: Option<String>,
}

/// One object a file makes, as its record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Ref {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl Ref {
    fn to_json(&self) -> Value {
        json!({"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name})
    }
    fn from_json(v: &Value) -> Option<Ref> {
        Some(Ref {
            api_version: v.get("apiVersion")?.as_str()?.to_string(),
            kind: v.get("kind")?.as_str()?.to_string(),
            namespace: v.get("namespace").and_then(Value::as_str).map(String::from),
            name: v.get("name")?.as_str()?.to_string(),
        })
    }
    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{} in {ns}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

/// The record's name for a file: `kite-manifest-` and the file name made a valid object
/// name (a short hash keeps two files apart when that changed it).
pub fn record_name(file: &str) -> String {
    let clean: String = file
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c| c == '-' || c == '.');
    // Label values are at most 63 characters, and the record's name is one.
    let base = format!("kite-manifest-{clean}");
    if base.len() <= 63 && clean == file {
        base
    } else {
        let hash = &checksum(file)[7..15];
        let keep = 63 - 1 - hash.len();
        let head: String = base.chars().take(keep).collect();
        format!("{}-{hash}", head.trim_end_matches(['-', '.']))
    }
}

fn checksum(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, opts: Options) -> anyhow::Result<()> {
    if let Err(e) = std::fs::create_dir_all(&opts.dir) {
        tracing::warn!(dir = %opts.dir.display(), error = %e, "cannot create the manifests folder");
    }
    let recorder = kite_runtime::events::Recorder::new(client.clone(), COMPONENT, "");
    let mut ctl = Controller {
        client,
        recorder,
        opts,
        files: HashMap::new(),
        kinds: HashMap::new(),
    };
    loop {
        if let Err(e) = ctl.tick().await {
            tracing::warn!(error = %format!("{e:#}"), "auto-deploying manifests");
        }
        tokio::time::sleep(ctl.opts.interval).await;
    }
}

struct Controller {
    client: kube::Client,
    recorder: kite_runtime::events::Recorder,
    opts: Options,
    files: HashMap<String, FileState>,
    /// Discovery answers, kept while they work (a failed apply forgets them).
    kinds: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
}

impl Controller {
    fn records(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// One pass: apply what is new or changed (or due a retry), prune what is gone.
    async fn tick(&mut self) -> anyhow::Result<()> {
        let paths = files::scan(&self.opts.dir)?;
        let mut present = HashSet::new();
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            present.insert(name.clone());
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue; // being written or removed: the next pass sees it
            };
            let sum = checksum(&text);
            let due = match self.files.get(&name) {
                Some(f) if f.checksum == sum => f.retry_at.is_some_and(|t| Instant::now() >= t),
                _ => true,
            };
            if due {
                self.apply_file(&name, &text, sum).await;
            }
        }
        // Records whose file is gone (a skipped file is still there) are pruned.
        let lp = ListParams::default().labels(LABEL);
        for rec in self.records().list(&lp).await? {
            let file = rec
                .data
                .as_ref()
                .and_then(|d| d.get("file"))
                .cloned()
                .unwrap_or_default();
            if file.is_empty() || present.contains(&file) || self.opts.dir.join(&file).exists() {
                continue;
            }
            let refs = refs_of(&rec);
            let record = rec.name_any();
            let mut failed = 0;
            for r in &refs {
                if let Err(e) = self.delete(r, &record).await {
                    failed += 1;
                    tracing::warn!(manifest = %file, object = %r.describe(), error = %e, "cannot prune");
                }
            }
            if failed == 0 {
                self.records()
                    .delete(&record, &DeleteParams::default())
                    .await
                    .ok();
                self.files.remove(&file);
                tracing::info!(manifest = %file, pruned = refs.len(), "manifest removed: its objects are deleted");
            }
        }
        Ok(())
    }

    async fn apply_file(&mut self, name: &str, text: &str, sum: String) {
        let record = record_name(name);
        let result = self.apply_objects(name, &record, text, &sum).await;
        let state = self.files.entry(name.to_string()).or_default();
        state.checksum = sum;
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(NAMESPACE.into()),
            name: Some(record.clone()),
            ..Default::default()
        };
        match result {
            Ok(n) => {
                state.retry_at = None;
                state.error = None;
                tracing::info!(manifest = %name, objects = n, "manifest applied");
                self.recorder.event_ref(
                    reference,
                    "Normal",
                    "AppliedManifest",
                    format!("Applied manifest {name:?} ({n} objects)"),
                );
            }
            Err(e) => {
                state.retry_at = Some(Instant::now() + RETRY);
                self.kinds.clear();
                // Said once per distinct error, not on every retry.
                if state.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(manifest = %name, error = %e, "manifest not applied");
                    self.recorder.event_ref(
                        reference,
                        "Warning",
                        "ApplyManifestFailed",
                        format!("Applying manifest {name:?} failed: {e}"),
                    );
                    state.error = Some(e);
                }
            }
        }
    }

    /// Applies a file's objects and prunes those it no longer lists; the number applied,
    /// or every failure in one message.
    async fn apply_objects(
        &mut self,
        name: &str,
        record: &str,
        text: &str,
        sum: &str,
    ) -> Result<usize, String> {
        let existing = self
            .records()
            .get_opt(record)
            .await
            .map_err(|e| format!("reading record {NAMESPACE}/{record}: {e}"))?;
        let mut objs = match files::objects(name, text) {
            Ok(o) => o,
            Err(e) => {
                // The record exists even for a file that never applied: its events hang there.
                self.save_record(record, name, sum, existing.as_ref(), None)
                    .await?;
                return Err(e.to_string());
            }
        };
        files::apply_order(&mut objs);
        let mut wanted = Vec::new();
        let mut errors = Vec::new();
        for obj in &objs {
            match self.apply_one(record, obj).await {
                Ok(r) => wanted.push(r),
                Err((r, e)) => {
                    errors.push(format!("{}: {e}", r.describe()));
                    wanted.push(r);
                }
            }
        }
        let old = existing.as_ref().map(refs_of).unwrap_or_default();
        for r in old.iter().filter(|r| !wanted.contains(r)) {
            if let Err(e) = self.delete(r, record).await {
                errors.push(format!("pruning {}: {e}", r.describe()));
            } else {
                tracing::info!(manifest = %name, object = %r.describe(), "pruned: no longer in the file");
            }
        }
        self.save_record(record, name, sum, existing.as_ref(), Some(&wanted))
            .await?;
        if errors.is_empty() {
            Ok(wanted.len())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn save_record(
        &self,
        record: &str,
        file: &str,
        sum: &str,
        existing: Option<&ConfigMap>,
        refs: Option<&[Ref]>,
    ) -> Result<(), String> {
        // Without a new list (the file did not parse), the old one stands.
        let objects = match refs {
            Some(r) => Value::Array(r.iter().map(Ref::to_json).collect()).to_string(),
            None => existing
                .and_then(|c| c.data.as_ref()?.get("objects").cloned())
                .unwrap_or_else(|| "[]".into()),
        };
        let data = BTreeMap::from([
            ("file".to_string(), file.to_string()),
            ("checksum".to_string(), sum.to_string()),
            ("objects".to_string(), objects),
        ]);
        let result = match existing {
            Some(_) => self
                .records()
                .patch(
                    record,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": data})),
                )
                .await
                .map(|_| ()),
            None => {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(record.to_string());
                cm.metadata.labels =
                    Some(BTreeMap::from([(LABEL.to_string(), record.to_string())]));
                cm.data = Some(data);
                self.records()
                    .create(&PostParams::default(), &cm)
                    .await
                    .map(|_| ())
            }
        };
        result.map_err(|e| format!("saving record {NAMESPACE}/{record}: {e}"))
    }

    /// The API and scope of an object's kind, asked once.
    async fn kind(
        &mut self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), String> {
        if let Some(k) = self.kinds.get(gvk) {
            return Ok(k.clone());
        }
        let k = kube::discovery::pinned_kind(&self.client, gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => format!(
                    "this server has no kind {} in {}",
                    gvk.kind,
                    api_version(gvk)
                ),
                kube::Error::Discovery(_) => format!(
                    "this server has no kind {} in {}",
                    gvk.kind,
                    api_version(gvk)
                ),
                e => format!("looking up kind {}: {e}", gvk.kind),
            })?;
        self.kinds.insert(gvk.clone(), k.clone());
        Ok(k)
    }

    fn api(&self, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    async fn apply_one(&mut self, record: &str, obj: &Value) -> Result<Ref, (Ref, String)> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let mut r = Ref {
            api_version,
            kind,
            namespace: obj["metadata"]["namespace"].as_str().map(String::from),
            name: name.clone(),
        };
        let (ar, caps) = match self.kind(&gvk).await {
            Ok(k) => k,
            Err(e) => return Err((r, e)),
        };
        r.namespace = match caps.scope {
            Scope::Namespaced => Some(r.namespace.unwrap_or_else(|| "default".into())),
            Scope::Cluster => None,
        };
        let desired = marked(obj, record, r.namespace.as_deref());
        let api = self.api(&ar, r.namespace.as_deref());
        let result = async {
            match api.get_opt(&name).await? {
                None => {
                    let o: DynamicObject =
                        serde_json::from_value(desired.clone()).map_err(kube::Error::SerdeError)?;
                    api.create(&PostParams::default(), &o).await?;
                }
                Some(live) => {
                    let last = live
                        .annotations()
                        .get(LAST_APPLIED)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .map(|l| marked(&l, record, r.namespace.as_deref()));
                    let p = merge::patch(last.as_ref(), &desired);
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                        .await?;
                }
            }
            Ok::<_, kube::Error>(())
        }
        .await;
        match result {
            Ok(()) => Ok(r),
            Err(kube::Error::Api(s)) => Err((r, s.message)),
            Err(e) => Err((r, e.to_string())),
        }
    }

    /// Deletes one object a file made, if it is still that file's (its label says so).
    async fn delete(&mut self, r: &Ref, record: &str) -> Result<(), String> {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let (ar, _) = match self.kind(&gvk).await {
            Ok(k) => k,
            // A kind that is gone took its objects with it.
            Err(_) => return Ok(()),
        };
        let api = self.api(&ar, r.namespace.as_deref());
        match api.get_opt(&r.name).await {
            Ok(Some(o)) if o.labels().get(LABEL).map(String::as_str) == Some(record) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        match api.delete(&r.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn api_version(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

/// The object as applied: the file's version, with the record's label, the file's
/// version itself in [`LAST_APPLIED`], and the namespace it goes to.
fn marked(obj: &Value, record: &str, namespace: Option<&str>) -> Value {
    let mut file_version = obj.clone();
    if let Some(a) = file_version
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
    }
    let mut o = file_version.clone();
    let meta = o["metadata"]
        .as_object_mut()
        .expect("checked: metadata is an object");
    if let Some(ns) = namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(l) = labels.as_object_mut() {
        l.insert(LABEL.into(), json!(record));
    }
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(LAST_APPLIED.into(), json!(file_version.to_string()));
    }
    o
}

fn refs_of(cm: &ConfigMap) -> Vec<Ref> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("objects"))
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(Ref::from_json)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_valid_and_distinct() {
        assert_eq!(record_name("traefik.yaml"), "kite-manifest-traefik.yaml");
        let a = record_name("My_App.yaml");
        let b = record_name("my-app.yaml");
        assert_ne!(a, b);
        assert!(a.starts_with("kite-manifest-my-app.yaml-"), "{a}");
        let long = record_name(&format!("{}.yaml", "x".repeat(80)));
        assert!(long.len() <= 63, "{long}");
        assert!(long.chars().last().unwrap().is_ascii_alphanumeric());
    }

    #[test]
    fn applied_objects_carry_the_label_and_the_files_version() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
        let m = marked(&obj, "kite-manifest-a.yaml", Some("default"));
        assert_eq!(m["metadata"]["labels"][LABEL], "kite-manifest-a.yaml");
        assert_eq!(m["metadata"]["namespace"], "default");
        let last: Value =
            serde_json::from_str(m["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap())
                .unwrap();
        assert_eq!(last, obj);
        // Marking what was read back from the annotation gives the same object.
        assert_eq!(marked(&last, "kite-manifest-a.yaml", Some("default")), m);
    }
}
