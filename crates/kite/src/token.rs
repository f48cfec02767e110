//! Join tokens on the server's side: the cluster token files K3s users know
//! (`<data-dir>/server/token`, `node-token`, `agent-token`), and `kite token
//! create|list|delete`, which manage bootstrap tokens (kube-system Secrets
//! `bootstrap-token-<id>`, upstream's format) with a TTL.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kite_join::token::{self, Token};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::path::Path;

/// The secret of a `--token`-style value, which must be for this CA if it names one.
fn secret_of(flag: &str, value: &str, ca_pem: &str) -> Result<String> {
    let t = Token::parse(value).map_err(|e| anyhow::anyhow!("invalid --{flag}: {e}"))?;
    if let Some(h) = &t.ca_hash {
        if *h != token::ca_hash(ca_pem) {
            bail!("invalid --{flag}: it was made for another cluster CA (its hash is not this server's); give the secret alone, or this cluster's token");
        }
    }
    Ok(t.secret)
}

/// Writes the token files and returns the secrets that admit a joining node.
pub fn server_tokens(
    server_dir: &Path,
    ca_pem: &str,
    token_flag: Option<&str>,
    agent_flag: Option<&str>,
) -> Result<Vec<String>> {
    let token_file = server_dir.join("token");
    let secret = match token_flag {
        Some(t) => secret_of("token", t, ca_pem)?,
        None => match std::fs::read_to_string(&token_file) {
            Ok(t) => secret_of("token", &t, ca_pem)
                .with_context(|| format!("reading {}", token_file.display()))?,
            Err(_) => token::random(32),
        },
    };
    let full = format!("{}\n", token::format(ca_pem, "server", &secret));
    for f in ["token", "node-token"] {
        kite_pki::write_file_atomic(&server_dir.join(f), full.as_bytes(), 0o600)?;
    }
    let mut secrets = vec![secret];
    let agent_file = server_dir.join("agent-token");
    match agent_flag {
        Some(t) => {
            let s = secret_of("agent-token", t, ca_pem)?;
            let full = format!("{}\n", token::format(ca_pem, "node", &s));
            kite_pki::write_file_atomic(&agent_file, full.as_bytes(), 0o600)?;
            secrets.push(s);
        }
        None => {
            let _ = std::fs::remove_file(&agent_file);
        }
    }
    Ok(secrets)
}

/// `kite token …`
pub fn run(args: &crate::config::TokenArgs) -> Result<()> {
    use crate::config::TokenAction;
    crate::server::client_runtime()?.block_on(async {
        let client = kite_runtime::client::from_kubeconfig(&args.kubeconfig()).await?;
        let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
        match &args.action {
            TokenAction::Create { ttl, description } => {
                let ttl = crate::config::parse_duration("ttl", ttl)?;
                let ca = client
                    .request_text(
                        http::Request::get("/cacerts")
                            .body(Vec::new())
                            .context("building the request")?,
                    )
                    .await
                    .context("reading the cluster CA from the server")?;
                let id = token::random(6);
                let secret = token::random(16);
                let mut data = vec![
                    ("token-id", id.clone()),
                    ("token-secret", secret.clone()),
                    ("usage-bootstrap-authentication", "true".to_string()),
                    ("usage-bootstrap-signing", "true".to_string()),
                    (
                        "auth-extra-groups",
                        "system:bootstrappers:kite:default-node-token".to_string(),
                    ),
                ];
                if !ttl.is_zero() {
                    let exp = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(ttl)?)?
                        .round(jiff::Unit::Second)?;
                    data.push(("expiration", exp.to_string()));
                }
                if let Some(d) = description {
                    data.push(("description", d.clone()));
                }
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("bootstrap-token-{id}")),
                        namespace: Some("kube-system".into()),
                        ..Default::default()
                    },
                    type_: Some("bootstrap.kubernetes.io/token".into()),
                    data: Some(
                        data.into_iter()
                            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                            .collect(),
                    ),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &s)
                    .await
                    .context("creating the token's Secret")?;
                println!("{}", token::format_bootstrap(&ca, &id, &secret));
            }
            TokenAction::List => {
                let lp = ListParams::default().fields("type=bootstrap.kubernetes.io/token");
                let list = api.list(&lp).await?;
                println!(
                    "{:<8} {:<26} {:<12} DESCRIPTION",
                    "TOKEN", "EXPIRES", "USAGES"
                );
                for s in list.items {
                    let get = |k: &str| {
                        s.data
                            .as_ref()
                            .and_then(|d| d.get(k))
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    };
                    let usages: Vec<&str> = [
                        ("usage-bootstrap-authentication", "auth"),
                        ("usage-bootstrap-signing", "signing"),
                    ]
                    .iter()
                    .filter(|(k, _)| get(k).as_deref() == Some("true"))
                    .map(|(_, n)| *n)
                    .collect();
                    println!(
                        "{:<8} {:<26} {:<12} {}",
                        get("token-id").unwrap_or_default(),
                        get("expiration").unwrap_or_else(|| "<forever>".into()),
                        usages.join(","),
                        get("description").unwrap_or_default()
                    );
                }
            }
            TokenAction::Delete { ids } => {
                for id in ids {
                    // `id` or a whole token: its id is what comes before the dot.
                    let id = id.rsplit("::").next().unwrap_or(id);
                    let id = id.split('.').next().unwrap_or(id);
                    match api
                        .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                        .await
                    {
                        Ok(_) => println!("bootstrap token {id:?} deleted"),
                        Err(kube::Error::Api(e)) if e.code == 404 => {
                            bail!("bootstrap token {id:?} not found (kite token list shows them)")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_keep_the_secret_across_restarts_and_refuse_another_cas_token() {
        let d = tempfile::tempdir().unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n";
        let first = server_tokens(d.path(), ca, None, None).unwrap();
        let again = server_tokens(d.path(), ca, None, None).unwrap();
        assert_eq!(first, again);
        let text = std::fs::read_to_string(d.path().join("node-token")).unwrap();
        assert_eq!(Token::parse(&text).unwrap().secret, first[0]);
        let with_agent = server_tokens(d.path(), ca, Some("s3cret"), Some("agentsecret")).unwrap();
        assert_eq!(with_agent, vec!["s3cret".to_string(), "agentsecret".into()]);
        assert!(d.path().join("agent-token").exists());
        let other = token::format("-----other-----", "server", "x");
        assert!(server_tokens(d.path(), ca, Some(&other), None).is_err());
        server_tokens(d.path(), ca, Some("s3cret"), None).unwrap();
        assert!(!d.path().join("agent-token").exists());
    }
}
