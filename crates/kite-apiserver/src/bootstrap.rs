//! What exists from the first start: the four system namespaces, and the `kubernetes` Service
//! in `default` with Endpoints and an EndpointSlice pointing at this server. Idempotent: it runs
//! on every start and only creates or corrects.

use crate::error::ApiResult;
use crate::objects::{Objects, Part, WriteOpts};
use serde_json::{json, Value};

async fn ensure(
    objs: &Objects,
    group: &str,
    version: &str,
    plural: &str,
    ns: Option<&str>,
    obj: Value,
) -> ApiResult<()> {
    let ri = objs
        .registry
        .lookup(group, version, plural)
        .expect("bootstrap kinds are registered");
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match objs.get(ri, ns, &name).await {
        Ok((current, _)) => {
            // Endpoints must follow the server's address; other objects are left as they are.
            if plural == "endpoints" || plural == "endpointslices" {
                let mut want = obj.clone();
                want["metadata"] = current["metadata"].clone();
                objs.update(ri, ns, &name, want, Part::Main, &WriteOpts::default())
                    .await?;
            }
            Ok(())
        }
        Err(e) if e.code == http::StatusCode::NOT_FOUND => {
            match objs.create(ri, ns, obj, &WriteOpts::default()).await {
                Ok(_) => Ok(()),
                Err(e) if e.reason == "AlreadyExists" => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

pub async fn run(objs: &Objects, advertise: &str, port: u16) -> ApiResult<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            objs,
            "",
            "v1",
            "namespaces",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    let first_ip = objs
        .cfg
        .service_cidr
        .hosts()
        .next()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    ensure(
        objs,
        "",
        "v1",
        "services",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": first_ip,
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        }),
    )
    .await?;
    ensure(
        objs,
        "",
        "v1",
        "endpoints",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": advertise}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        }),
    )
    .await?;
    ensure(
        objs,
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": if advertise.contains(':') { "IPv6" } else { "IPv4" },
            "endpoints": [{"addresses": [advertise], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }),
    )
    .await?;
    // The default ServiceCIDR, as upstream's apiserver keeps it: the service range, Ready.
    // (Both ranges on a dual-stack cluster, IPv4 first.)
    let cidrs: Vec<String> = std::iter::once(objs.cfg.service_cidr.to_string())
        .chain(objs.cfg.service_cidr_v6.map(|n| n.to_string()))
        .collect();
    ensure(
        objs,
        "networking.k8s.io",
        "v1",
        "servicecidrs",
        None,
        json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": cidrs}}),
    )
    .await?;
    let ri = objs
        .registry
        .lookup("networking.k8s.io", "v1", "servicecidrs")
        .expect("bootstrap kinds are registered");
    let (mut current, _) = objs.get(ri, None, "kubernetes").await?;
    let ready = current["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    if !ready {
        current["status"] = json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "",
            "message": "Kubernetes Service CIDR is ready",
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]});
        objs.update(
            ri,
            None,
            "kubernetes",
            current,
            Part::Status,
            &WriteOpts::default(),
        )
        .await?;
    }
    Ok(())
}
