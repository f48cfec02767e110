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

/// `script` cut into transactions of about `max_lines` lines each, between top-level
/// commands (a block such as `table … { … }` stays whole). Each piece only needs what the
/// ones before it made, so applied in order they make what `script` makes, though not
/// atomically.
pub fn chunks(script: &str, max_lines: usize) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut lines, mut depth) = (String::new(), 0usize, 0i64);
    for line in script.split_inclusive('\n') {
        cur.push_str(line);
        lines += 1;
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        if depth == 0 && lines >= max_lines {
            out.push(std::mem::take(&mut cur));
            lines = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
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

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_cut_between_commands_not_inside_blocks() {
        let script = "table ip t {\n  chain a { }\n  chain b { }\n}\nadd rule ip t a accept\nadd rule ip t a drop\nadd rule ip t b accept\n";
        let c = super::chunks(script, 2);
        assert_eq!(c[0], "table ip t {\n  chain a { }\n  chain b { }\n}\n");
        assert_eq!(c[1], "add rule ip t a accept\nadd rule ip t a drop\n");
        assert_eq!(c[2], "add rule ip t b accept\n");
        assert_eq!(c.concat(), script);
        assert!(super::chunks("", 10).is_empty());
    }
}
