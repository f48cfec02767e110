//! Per-namespace defaults: the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap holding the cluster CA, in every active namespace, put back if deleted or
//! changed (the ServiceAccount and root-CA-publisher controllers upstream).

use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::PostParams;
use kube::Api;
use std::sync::Arc;

pub const ROOT_CA: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub fn start(ctx: Arc<Ctx>) {
    let namespaces = ctx.informers.get::<Namespace>();
    let sas = ctx.informers.get::<ServiceAccount>();
    let cms = ctx.informers.get::<ConfigMap>();
    let q: WorkQueue<String> = WorkQueue::new();
    let q1 = q.clone();
    namespaces.add_handler(move |c: &Change<Namespace>| {
        if !matches!(c, Change::Deleted(_)) {
            q1.add(c.object().metadata.name.clone().unwrap_or_default());
        }
    });
    let q2 = q.clone();
    sas.add_handler(move |c: &Change<ServiceAccount>| {
        if matches!(c, Change::Deleted(_)) && c.object().metadata.name.as_deref() == Some("default")
        {
            q2.add(c.object().metadata.namespace.clone().unwrap_or_default());
        }
    });
    let q3 = q.clone();
    cms.add_handler(move |c: &Change<ConfigMap>| {
        if c.object().metadata.name.as_deref() == Some(ROOT_CA) {
            q3.add(c.object().metadata.namespace.clone().unwrap_or_default());
        }
    });
    run_workers_after(
        futures::future::join3(
            namespaces.synced_future(),
            sas.synced_future(),
            cms.synced_future(),
        ),
        "serviceaccount-controller",
        q,
        2,
        move |ns: String| {
            let (ctx, namespaces, sas, cms) =
                (ctx.clone(), namespaces.clone(), sas.clone(), cms.clone());
            async move {
                let Some(n) = namespaces.get("", &ns) else {
                    return Ok(Action::AwaitChange);
                };
                let terminating = n.metadata.deletion_timestamp.is_some()
                    || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
                if terminating {
                    return Ok(Action::AwaitChange);
                }
                if sas.get(&ns, "default").is_none() {
                    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
                    let sa = ServiceAccount {
                        metadata: ObjectMeta {
                            name: Some("default".into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    ignore_exists(api.create(&PostParams::default(), &sa).await)?;
                }
                let want_data = [("ca.crt".to_string(), ctx.opts.root_ca_pem.clone())].into();
                let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                let desired = |rv: Option<String>| ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA.into()),
                        resource_version: rv,
                        annotations: Some(
                            [(
                                "kubernetes.io/description".to_string(),
                                DESCRIPTION.to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    data: Some(want_data),
                    ..Default::default()
                };
                match cms.get(&ns, ROOT_CA) {
                    None => {
                        ignore_exists(cm_api.create(&PostParams::default(), &desired(None)).await)?
                    }
                    Some(cm)
                        if cm.data.as_ref().and_then(|d| d.get("ca.crt"))
                            != Some(&ctx.opts.root_ca_pem) =>
                    {
                        cm_api
                            .replace(
                                ROOT_CA,
                                &PostParams::default(),
                                &desired(cm.metadata.resource_version.clone()),
                            )
                            .await?;
                    }
                    Some(_) => {}
                }
                Ok(Action::AwaitChange)
            }
        },
    );
}

fn ignore_exists<T>(r: kube::Result<T>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        // The namespace began terminating meanwhile.
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("terminat") => Ok(()),
        Err(e) => Err(e.into()),
    }
}
