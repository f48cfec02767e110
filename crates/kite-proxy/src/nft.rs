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

/// Checks `script` with `nft --check` (parsed and validated by the kernel, not applied):
/// `None` where that cannot be done (no nft, not root), for tests that then say so.
pub fn check(script: &str) -> Option<Result<(), String>> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["--check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(script.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("Operation not permitted") {
        return None;
    }
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(err)
    })
}
