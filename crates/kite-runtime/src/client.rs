//! Building a `kube::Client` from a component kubeconfig written by `kite server`.

use anyhow::{Context, Result};
use std::path::Path;

/// A client for the API server named in `path`, with that kubeconfig's identity.
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    // Controllers keep long watches open and issue many small requests.
    cfg.read_timeout = Some(std::time::Duration::from_secs(320));
    kube::Client::try_from(cfg).context("building the API client")
}
