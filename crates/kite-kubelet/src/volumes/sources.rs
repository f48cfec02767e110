//! What the API-backed volumes hold: the files of a configMap, secret, downwardAPI or
//! projected volume (and the ServiceAccount token of a projected one), with upstream's
//! key selection, modes, `optional`, and error messages.

use super::atomic::{validate, File, Payload};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount,
};
use kite_runtime::informer::Informer;
use kube::api::{Api, PostParams};
use kube::core::PartialObjectMeta;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Why a volume cannot be set up, in upstream's words.
pub type Error = String;

/// What sources need of the pod and node.
pub struct Ctx<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub tokens: &'a Tokens,
    pub objects: &'a Objects,
    pub node_ip: String,
    /// Image volumes, already mounted by the pod worker (see `image_volumes`), by name.
    pub images: &'a std::collections::HashMap<String, std::path::PathBuf>,
}

impl Ctx<'_> {
    fn ns(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }
}

fn mode_of(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default).unwrap_or(0o644) as u32 & 0o7777
}

/// Selected keys (`items`) or all of them, into `out`.
fn select(
    out: &mut Payload,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    missing_key: impl Fn(&str) -> String,
    optional: bool,
) -> Result<(), Error> {
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                validate(&k)?;
                out.insert(
                    k,
                    File {
                        data: v,
                        mode: mode_of(None, default_mode),
                    },
                );
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        validate(&it.path)?;
                        out.insert(
                            it.path.clone(),
                            File {
                                data: v.clone(),
                                mode: mode_of(it.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(missing_key(&it.key)),
                }
            }
        }
    }
    Ok(())
}

/// A missing source: an empty volume when optional, upstream's error otherwise.
fn absent(kind: &str, name: &str, optional: bool) -> Result<(), Error> {
    if optional {
        Ok(())
    } else {
        Err(format!("{kind} \"{name}\" not found"))
    }
}

fn kube_err(e: kube::Error) -> Error {
    format!("{e}")
}

/// A configMap's files; `None` when it is missing and optional (an empty volume).
pub async fn config_map(
    ctx: &Ctx<'_>,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    out: &mut Payload,
) -> Result<(), Error> {
    let ns = ctx.ns();
    let Some(cm) = ctx
        .objects
        .config_maps
        .get(ctx.client, &ns, name)
        .await
        .map_err(kube_err)?
    else {
        return absent("configmap", name, optional);
    };
    let mut data: BTreeMap<String, Vec<u8>> = (cm.data.iter().flatten())
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    select(
        out,
        data,
        items,
        default_mode,
        |k| format!("configmap references non-existent config key: {k}"),
        optional,
    )
}

/// The ConfigMaps and Secrets that volumes read, each read from the API once and again
/// only when the metadata-only informer (which the kubelet keeps anyway, to rewrite
/// volumes on change) shows a newer resourceVersion, or none; as upstream's kubelet
/// serves them from a watch-based cache. So a hundred pods in one namespace read
/// `kube-root-ca.crt` once, and a changed object is read again before its rewrite.
pub struct Objects {
    pub config_maps: Cached<ConfigMap>,
    pub secrets: Cached<Secret>,
}

impl Objects {
    pub fn new(
        config_maps: Option<Arc<Informer<PartialObjectMeta<ConfigMap>>>>,
        secrets: Option<Arc<Informer<PartialObjectMeta<Secret>>>>,
    ) -> Self {
        Objects {
            config_maps: Cached::new(config_maps),
            secrets: Cached::new(secrets),
        }
    }
}

/// The resourceVersion an informer shows of an object (namespace, name), if any.
type Current = Box<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// Objects of one kind by namespace and name, each as last read.
pub struct Cached<K> {
    current: Current,
    read: Mutex<HashMap<(String, String), Arc<K>>>,
}

impl<K> Cached<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    PartialObjectMeta<K>: kite_runtime::informer::Kind,
{
    fn new(informer: Option<Arc<Informer<PartialObjectMeta<K>>>>) -> Self {
        Self::with_current(Box::new(move |ns, name| {
            informer
                .as_ref()?
                .get(ns, name)?
                .metadata
                .resource_version
                .clone()
        }))
    }

    fn with_current(current: Current) -> Self {
        Cached {
            current,
            read: Mutex::default(),
        }
    }

    /// The object as last read, if the informer shows that version still; else read now.
    pub async fn get(
        &self,
        client: &kube::Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        let key = (ns.to_string(), name.to_string());
        if let (Some(rv), Some(read)) = (
            (self.current)(ns, name),
            self.read.lock().unwrap().get(&key),
        ) {
            if read.meta().resource_version.as_ref() == Some(&rv) {
                return Ok(Some(read.clone()));
            }
        }
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let got = api.get_opt(name).await?.map(Arc::new);
        let mut read = self.read.lock().unwrap();
        match &got {
            Some(o) => read.insert(key, o.clone()),
            None => read.remove(&key),
        };
        Ok(got)
    }

    /// Drops what was read of an object that changed or went.
    pub fn forget(&self, ns: &str, name: &str) {
        (self.read.lock().unwrap()).remove(&(ns.to_string(), name.to_string()));
    }
}

/// A secret's files.
pub async fn secret(
    ctx: &Ctx<'_>,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    out: &mut Payload,
) -> Result<(), Error> {
    let ns = ctx.ns();
    let Some(s) = ctx
        .objects
        .secrets
        .get(ctx.client, &ns, name)
        .await
        .map_err(kube_err)?
    else {
        return absent("secret", name, optional);
    };
    let mut data: BTreeMap<String, Vec<u8>> = (s.data.iter().flatten())
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    select(
        out,
        data,
        items,
        default_mode,
        |k| format!("references non-existent secret key: {k}"),
        optional,
    )
}

/// Upstream's `fieldpath.FormatMap`: sorted `key="value"` lines.
fn format_map(m: &Option<BTreeMap<String, String>>) -> String {
    m.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A downwardAPI volume's files.
pub fn downward(
    ctx: &Ctx<'_>,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    out: &mut Payload,
) -> Result<(), Error> {
    let pod = ctx.pod;
    let m = &pod.metadata;
    for it in items {
        validate(&it.path)?;
        let value = if let Some(f) = &it.field_ref {
            let p = f.field_path.as_str();
            let bracket = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
                p.strip_prefix(prefix)
                    .and_then(|k| k.strip_prefix("['"))
                    .and_then(|k| k.strip_suffix("']"))
                    .map(|k| {
                        map.as_ref()
                            .and_then(|m| m.get(k))
                            .cloned()
                            .unwrap_or_default()
                    })
            };
            match p {
                "metadata.name" => m.name.clone().unwrap_or_default(),
                "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
                "metadata.uid" => m.uid.clone().unwrap_or_default(),
                "metadata.labels" => format_map(&m.labels),
                "metadata.annotations" => format_map(&m.annotations),
                "spec.nodeName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" => ctx.node_ip.clone(),
                "status.podIP" => pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default(),
                _ => match bracket("metadata.labels", &m.labels)
                    .or_else(|| bracket("metadata.annotations", &m.annotations))
                {
                    Some(v) => v,
                    None => return Err(format!("unsupported fieldPath: {p}")),
                },
            }
        } else if let Some(r) = &it.resource_field_ref {
            let cname = r.container_name.clone().unwrap_or_default();
            let spec = pod.spec.clone().unwrap_or_default();
            let c = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == cname)
                .ok_or_else(|| format!("container {cname:?} not found in the pod"))?;
            crate::pods::resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
        } else {
            continue;
        };
        out.insert(
            it.path.clone(),
            File {
                data: value.into_bytes(),
                mode: mode_of(it.mode, default_mode),
            },
        );
    }
    Ok(())
}

/// ServiceAccount tokens the kubelet holds for pods' projected volumes, refreshed at 80% of
/// their life (or after a day), as upstream's token manager.
#[derive(Default)]
pub struct Tokens {
    cache: Mutex<HashMap<TokenKey, (String, std::time::Instant)>>,
}

type TokenKey = (String, String, i64);

impl Tokens {
    /// A token for the pod's account, bound to the pod.
    pub async fn get(
        &self,
        ctx: &Ctx<'_>,
        audience: &str,
        expiration: i64,
    ) -> Result<String, Error> {
        let uid = ctx.pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), audience.to_string(), expiration);
        let now = std::time::Instant::now();
        if let Some((t, refresh)) = self.cache.lock().unwrap().get(&key) {
            if now < *refresh {
                return Ok(t.clone());
            }
        }
        let sa = ctx
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!audience.is_empty()).then(|| vec![audience.to_string()]),
                expiration_seconds: Some(expiration),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: ctx.pod.metadata.name.clone(),
                    uid: Some(uid),
                }),
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ctx.ns());
        let out: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let status = out.status.ok_or("failed to fetch token: no status")?;
        let token = status
            .token
            .clone()
            .ok_or("failed to fetch token: no token")?;
        let life = status
            .expiration_timestamp
            .map(|t| t.0)
            .unwrap_or_else(|| jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expiration))
            .duration_since(jiff::Timestamp::now())
            .as_secs()
            .clamp(60, 24 * 3600) as u64;
        let refresh = now + std::time::Duration::from_secs(life * 8 / 10);
        self.cache
            .lock()
            .unwrap()
            .insert(key, (token.clone(), refresh));
        Ok(token)
    }

    /// Forgets a pod's tokens (it is gone).
    pub fn forget(&self, uid: &str) {
        self.cache.lock().unwrap().retain(|k, _| k.0 != uid);
    }
}

/// A projected volume's files: each source's in order (later paths win).
pub async fn projected(
    ctx: &Ctx<'_>,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    out: &mut Payload,
) -> Result<(), Error> {
    let mode = p.default_mode;
    for s in p.sources.iter().flatten() {
        if let Some(c) = &s.config_map {
            config_map(
                ctx,
                &c.name,
                c.items.as_ref(),
                mode,
                c.optional == Some(true),
                out,
            )
            .await?;
        }
        if let Some(c) = &s.secret {
            secret(
                ctx,
                &c.name,
                c.items.as_ref(),
                mode,
                c.optional == Some(true),
                out,
            )
            .await?;
        }
        if let Some(d) = &s.downward_api {
            downward(ctx, d.items.as_deref().unwrap_or_default(), mode, out)?;
        }
        if let Some(t) = &s.service_account_token {
            validate(&t.path)?;
            let token = ctx
                .tokens
                .get(
                    ctx,
                    t.audience.as_deref().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .await?;
            out.insert(
                t.path.clone(),
                File {
                    data: token.into_bytes(),
                    mode: mode_of(None, mode),
                },
            );
        }
        if s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some() {
            return Err(
                "clusterTrustBundle and podCertificate projections are not supported by kite yet"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cached;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A client whose API holds one ConfigMap `default/cm` at the version in `rv` (none:
    /// not found), and counts the GETs.
    fn api(rv: Arc<Mutex<Option<String>>>, gets: Arc<AtomicUsize>) -> kube::Client {
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let rv = rv.lock().unwrap().clone();
            let gets = gets.clone();
            async move {
                assert_eq!(req.uri().path(), "/api/v1/namespaces/default/configmaps/cm");
                gets.fetch_add(1, Ordering::SeqCst);
                let (code, body) = match rv {
                    Some(rv) => (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "cm", "namespace": "default", "resourceVersion": rv},
                        "data": {"v": rv}}),
                    ),
                    None => (
                        404,
                        serde_json::json!({"apiVersion": "v1", "kind": "Status",
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": "configmaps \"cm\" not found"}),
                    ),
                };
                let resp = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        kube::Client::new(svc, "default")
    }

    fn value(cm: &ConfigMap) -> &str {
        &cm.data.as_ref().unwrap()["v"]
    }

    #[tokio::test]
    async fn an_object_is_read_again_only_when_its_version_moves() {
        let rv = Arc::new(Mutex::new(Some("5".to_string())));
        let gets: Arc<AtomicUsize> = Arc::default();
        let client = api(rv.clone(), gets.clone());
        // What the informer shows: "5" too, then whatever the test sets.
        let shown = Arc::new(Mutex::new(Some("5".to_string())));
        let s = shown.clone();
        let cached: Cached<ConfigMap> =
            Cached::with_current(Box::new(move |_, _| s.lock().unwrap().clone()));
        for _ in 0..3 {
            let cm = cached.get(&client, "default", "cm").await.unwrap().unwrap();
            assert_eq!(value(&cm), "5");
        }
        assert_eq!(gets.load(Ordering::SeqCst), 1, "read once for three pods");
        // Changed: the informer shows the new version, so it is read again.
        *rv.lock().unwrap() = Some("7".into());
        *shown.lock().unwrap() = Some("7".into());
        let cm = cached.get(&client, "default", "cm").await.unwrap().unwrap();
        assert_eq!((value(&cm), gets.load(Ordering::SeqCst)), ("7", 2));
        // The informer has not seen it (not synced, or gone): always read.
        *shown.lock().unwrap() = None;
        cached.get(&client, "default", "cm").await.unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 3);
        // Gone from the API: none, and nothing kept.
        *rv.lock().unwrap() = None;
        *shown.lock().unwrap() = Some("7".into());
        cached.forget("default", "cm");
        assert!(cached
            .get(&client, "default", "cm")
            .await
            .unwrap()
            .is_none());
        assert!(cached
            .get(&client, "default", "cm")
            .await
            .unwrap()
            .is_none());
        assert_eq!(gets.load(Ordering::SeqCst), 5);
    }
}
