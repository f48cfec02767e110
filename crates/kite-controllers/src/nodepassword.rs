//! Node passwords (K3s's node-password Secrets, kept by the join endpoint as
//! `kube-system/<node>.node-password.kite`): when a Node object is deleted its password
//! goes too, as K3s does, so that a machine rebuilt under that name can join again.

use crate::Ctx;
use k8s_openapi::api::core::v1::{Node, Secret};
use kite_runtime::informer::Change;
use kube::api::{Api, DeleteParams};
use std::sync::Arc;

pub fn start(ctx: Arc<Ctx>) {
    let nodes = ctx.informers.get::<Node>();
    let client = ctx.client.clone();
    nodes.add_handler(move |c| {
        let Change::Deleted(n) = c else { return };
        let Some(name) = n.metadata.name.clone() else {
            return;
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
        tokio::spawn(async move {
            match api
                .delete(
                    &format!("{name}.node-password.kite"),
                    &DeleteParams::default(),
                )
                .await
            {
                Ok(_) => tracing::info!(node = %name, "node deleted: its node password removed"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(node = %name, error = %e, "removing a node password"),
            }
        });
    });
}
