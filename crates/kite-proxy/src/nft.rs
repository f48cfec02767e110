//! Applies a transaction with the `nft` tool (`nft -f -`): one atomic transaction per
//! sync, as kube-proxy's nftables mode runs it through `knftables`.

use std::process::Stdio;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft is not installed (apt-get install nftables): Services cannot be reached")]
    Missing,
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    #[error("nft refused the transaction: {0}")]
    Refused(String),
}

/// Runs `script` as one transaction; nothing of it applies if any part fails.
pub async fn apply(script: &str) -> Result<(), NftError> {
    let mut child = match tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NftError::Missing),
        Err(e) => return Err(e.into()),
    };
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Removes the table (when the proxy is turned off, or by tests).
pub async fn remove_table() -> Result<(), NftError> {
    let t = crate::rules::TABLE;
    apply(&format!("add table ip {t}\ndelete table ip {t}\n")).await
}
