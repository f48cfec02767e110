//! Leader election through a coordination.k8s.io Lease in kube-system, as upstream's
//! `leaderelection` package does: the holder renews `renewTime`; another candidate takes
//! the lease once it is older than `leaseDurationSeconds`.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;
use std::time::Duration;

const LEASE_SECONDS: i32 = 15;
const RETRY: Duration = Duration::from_secs(2);

/// Blocks until `identity` holds the lease `name`, then keeps renewing it in the
/// background. Returns a receiver that turns `true` if leadership is lost to another
/// holder (the caller should stop acting).
pub async fn acquire(
    client: kube::Client,
    name: &str,
    identity: &str,
) -> tokio::sync::watch::Receiver<bool> {
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    loop {
        match try_acquire(&api, name, identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(lease = name, error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(lease = name, identity, "became leader");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (name, identity) = (name.to_string(), identity.to_string());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETRY).await;
            match try_acquire(&api, &name, &identity).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(lease = %name, "leadership lost to another holder");
                    let _ = tx.send(true);
                    return;
                }
                Err(e) => tracing::debug!(lease = %name, error = %e, "lease renewal failed"),
            }
        }
    });
    rx
}

/// One attempt: `Ok(true)` if `identity` holds the lease afterwards.
async fn try_acquire(api: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let now = jiff::Timestamp::now();
    let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some("kube-system".into()),
                    ..Default::default()
                },
                spec: Some(mine(0, None)),
            };
            match api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut l) => {
            let spec = l.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let transitions = spec.lease_transitions.unwrap_or(0);
            let spec = if holder == identity {
                mine(transitions, spec.acquire_time.clone())
            } else {
                let renewed = spec
                    .renew_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                let dur = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64;
                let expired = holder.is_empty() || now.as_second() - renewed.as_second() > dur;
                if !expired {
                    return Ok(false);
                }
                mine(transitions + 1, None)
            };
            l.spec = Some(spec);
            // A conflict is a race to be retried, not proof that someone else holds it.
            api.replace(name, &PostParams::default(), &l)
                .await
                .map(|_| true)
        }
    }
}
