//! EndpointSlice mirroring, as upstream's controller: the Endpoints a user writes for a
//! Service without a selector are mirrored into EndpointSlices (managed by
//! `endpointslicemirroring-controller.k8s.io`), so everything that reads slices (the
//! service proxy, DNS) sees them. An Endpoints labelled
//! `endpointslice.kubernetes.io/skip-mirror=true` is not mirrored; when the Service
//! gains a selector or either object goes, the mirrored slices go.

use crate::{util, Ctx};
use anyhow::Result;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kite_runtime::informer::Key;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use std::sync::Arc;

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const SKIP: &str = "endpointslice.kubernetes.io/skip-mirror";

fn key<K: kube::Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// The slices that mirror `ep` for `svc`: one per subset (IPv4 addresses; ready ones
/// from `addresses`, not-ready from `notReadyAddresses`).
pub fn desired(svc: &Service, ep: &Endpoints) -> Vec<EndpointSlice> {
    let (ns, name) = key(svc);
    let mut labels: BTreeMap<String, String> = ep
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != SKIP)
        .collect();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), MIRRORING.into());
    ep.subsets
        .iter()
        .flatten()
        .filter_map(|s| {
            let mut endpoints = Vec::new();
            for (ready, list) in [(true, &s.addresses), (false, &s.not_ready_addresses)] {
                for a in list.iter().flatten() {
                    if a.ip.parse::<std::net::Ipv4Addr>().is_err() {
                        continue;
                    }
                    endpoints.push(Endpoint {
                        addresses: vec![a.ip.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        hostname: a.hostname.clone(),
                        node_name: a.node_name.clone(),
                        target_ref: a.target_ref.clone(),
                        ..Default::default()
                    });
                }
            }
            if endpoints.is_empty() {
                return None;
            }
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| EndpointPort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect();
            Some(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![util::owner_ref(svc)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: Some(endpoints),
                ports: Some(ports),
            })
        })
        .collect()
}

pub fn start(ctx: Arc<Ctx>) {
    let services = ctx.informers.get::<Service>();
    let endpoints = ctx.informers.get::<Endpoints>();
    let slices = ctx.informers.get::<EndpointSlice>();
    let q: WorkQueue<Key> = WorkQueue::new();
    let q1 = q.clone();
    services.add_handler(move |c: &Change<Service>| q1.add(key(&**c.object())));
    let q2 = q.clone();
    endpoints.add_handler(move |c: &Change<Endpoints>| q2.add(key(&**c.object())));
    let q3 = q.clone();
    slices.add_handler(move |c: &Change<EndpointSlice>| {
        let l = c.object().metadata.labels.clone().unwrap_or_default();
        if l.get(MANAGED_BY).map(String::as_str) == Some(MIRRORING) {
            if let Some(svc) = l.get(SERVICE_NAME) {
                let ns = c.object().metadata.namespace.clone().unwrap_or_default();
                q3.add((ns, svc.clone()));
            }
        }
    });
    run_workers_after(
        futures::future::join3(
            services.synced_future(),
            endpoints.synced_future(),
            slices.synced_future(),
        ),
        "endpointslice-mirroring-controller",
        q,
        1,
        move |k: Key| {
            let (ctx, services, endpoints, slices) = (
                ctx.clone(),
                services.clone(),
                endpoints.clone(),
                slices.clone(),
            );
            async move {
                let svc = services.get_key(&k);
                let ep = endpoints.get_key(&k);
                let want = match (&svc, &ep) {
                    (Some(s), Some(e))
                        if s.spec
                            .as_ref()
                            .and_then(|sp| sp.selector.as_ref())
                            .is_none_or(|m| m.is_empty())
                            && s.metadata.deletion_timestamp.is_none()
                            && e.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(SKIP))
                                .map(String::as_str)
                                != Some("true") =>
                    {
                        desired(s, e)
                    }
                    _ => vec![],
                };
                sync(&ctx, &k, want, &slices.list_ns(&k.0)).await?;
                Ok(Action::AwaitChange)
            }
        },
    );
}

/// Makes the mirrored slices of `k` the `want`ed ones: unchanged ones stay, the rest
/// are replaced.
async fn sync(
    ctx: &Ctx,
    k: &Key,
    want: Vec<EndpointSlice>,
    in_ns: &[Arc<EndpointSlice>],
) -> Result<()> {
    let mut have: Vec<&Arc<EndpointSlice>> = in_ns
        .iter()
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            l.get(SERVICE_NAME) == Some(&k.1)
                && l.get(MANAGED_BY).map(String::as_str) == Some(MIRRORING)
        })
        .collect();
    have.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &k.0);
    let mut unmatched: Vec<EndpointSlice> = Vec::new();
    let mut used = vec![false; have.len()];
    for w in want {
        let hit = have.iter().enumerate().position(|(i, h)| {
            !used[i]
                && h.endpoints == w.endpoints
                && h.ports == w.ports
                && h.metadata.labels == w.metadata.labels
        });
        match hit {
            Some(i) => used[i] = true,
            None => unmatched.push(w),
        }
    }
    for (i, h) in have.iter().enumerate() {
        if used[i] {
            continue;
        }
        let name = h.metadata.name.clone().unwrap_or_default();
        match unmatched.pop() {
            Some(mut w) => {
                w.metadata.name = Some(name.clone());
                w.metadata.generate_name = None;
                w.metadata.resource_version = h.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &w).await?;
            }
            None => match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if util::is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    for w in unmatched {
        api.create(&PostParams::default(), &w).await?;
    }
    Ok(())
}
