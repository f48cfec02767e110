//! `registries.yaml` in K3s's format, and where a pull of one image goes.
//!
//! ```yaml
//! mirrors:
//!   docker.io:                      # or "*" for every registry
//!     endpoint: ["http://127.0.0.1:5000", "https://mirror.example.com"]
//!     rewrite: {"^library/(.*)": "mirrored/$1"}
//! configs:
//!   mirror.example.com:             # an endpoint's host[:port], or a registry name
//!     auth: {username: u, password: p}   # or auth: base64("u:p")
//!     tls: {ca_file: /path/ca.pem, insecure_skip_verify: false}
//! ```
//!
//! As in K3s (containerd's hosts), the mirror endpoints are tried in order and the
//! registry's own ("default") endpoint last; rewrites apply to mirror endpoints only; an
//! `http://` endpoint is plain HTTP, and so is a default endpoint on loopback (`localhost`,
//! `127.0.0.1`, `[::1]`), which containerd also allows.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The parsed file. Unknown keys are errors, so a typo does not silently drop a mirror.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Mirror>,
    configs: BTreeMap<String, Config>,
}

#[derive(Debug, Clone)]
struct Mirror {
    endpoints: Vec<Url>,
    rewrites: Vec<(regex::Regex, String)>,
}

#[derive(Debug, Clone)]
struct Url {
    plain_http: bool,
    host: String,
}

/// Credentials and TLS settings for one host.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub auth: Option<(String, String)>,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    #[serde(default)]
    rewrite: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// Why a registries file was refused: one line, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct Error {
    path: String,
    msg: String,
}

/// One place to try a pull.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `host[:port]`, as it goes into the URL.
    pub host: String,
    pub plain_http: bool,
    /// The repository at that host (rewritten, for a mirror).
    pub repository: String,
    /// The registry's own endpoint, not a mirror.
    pub is_default: bool,
}

impl Endpoint {
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        let host = if self.is_default && self.host == "docker.io" {
            "index.docker.io"
        } else {
            &self.host
        };
        format!("{scheme}://{host}/v2/{}", self.repository)
    }
}

impl Registries {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Registries, Error> {
        let err = |msg: String| Error {
            path: path.display().to_string(),
            msg,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        Self::parse(&text).map_err(err)
    }

    pub fn parse(text: &str) -> Result<Registries, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let file: File = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let mut out = Registries::default();
        for (name, m) in file.mirrors {
            let mut endpoints = Vec::new();
            for (i, e) in m.endpoint.iter().enumerate() {
                endpoints.push(
                    parse_endpoint(e)
                        .map_err(|msg| format!("mirrors.{name}.endpoint[{i}] {e:?}: {msg}"))?,
                );
            }
            let mut rewrites = Vec::new();
            for (pat, rep) in m.rewrite {
                let re = regex::Regex::new(&pat)
                    .map_err(|e| format!("mirrors.{name}.rewrite {pat:?}: {e}"))?;
                rewrites.push((re, rep));
            }
            out.mirrors.insert(
                name,
                Mirror {
                    endpoints,
                    rewrites,
                },
            );
        }
        for (host, c) in file.configs {
            let mut cfg = Config::default();
            if let Some(a) = c.auth {
                if a.identitytoken.is_some() {
                    return Err(format!(
                        "configs.{host}.auth.identitytoken: not supported; use username and password"
                    ));
                }
                cfg.auth = match (a.username, a.password, a.auth) {
                    (Some(u), p, _) => Some((u, p.unwrap_or_default())),
                    (None, _, Some(b)) => Some(decode_basic(&b).ok_or_else(|| {
                        format!("configs.{host}.auth.auth: not base64 of \"user:password\"")
                    })?),
                    (None, Some(_), None) => {
                        return Err(format!(
                            "configs.{host}.auth: a password without a username"
                        ))
                    }
                    (None, None, None) => None,
                };
            }
            if let Some(t) = c.tls {
                if t.cert_file.is_some() || t.key_file.is_some() {
                    return Err(format!(
                        "configs.{host}.tls: client certificates (cert_file, key_file) are not supported yet"
                    ));
                }
                if let Some(f) = t.ca_file {
                    cfg.ca_pem = Some(
                        std::fs::read(&f)
                            .map_err(|e| format!("configs.{host}.tls.ca_file {f}: {e}"))?,
                    );
                }
                cfg.insecure_skip_verify = t.insecure_skip_verify;
            }
            out.configs.insert(host, cfg);
        }
        Ok(out)
    }

    /// Where to pull `registry/repository` from, in order.
    pub fn endpoints(&self, registry: &str, repository: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if let Some(m) = self.mirrors.get(registry).or_else(|| self.mirrors.get("*")) {
            let repo = rewrite(&m.rewrites, repository);
            for u in &m.endpoints {
                out.push(Endpoint {
                    host: u.host.clone(),
                    plain_http: u.plain_http,
                    repository: repo.clone(),
                    is_default: false,
                });
            }
        }
        let host_only = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        let loopback = matches!(host_only, "localhost" | "127.0.0.1" | "[::1]");
        if !out.iter().any(|e| e.host == registry) {
            out.push(Endpoint {
                host: registry.to_string(),
                plain_http: loopback,
                repository: repository.to_string(),
                is_default: true,
            });
        }
        out
    }

    /// The settings for an endpoint's host (or, for the default endpoint, the registry).
    pub fn config(&self, host: &str) -> Option<&Config> {
        self.configs.get(host)
    }
}

fn rewrite(rules: &[(regex::Regex, String)], repository: &str) -> String {
    for (re, rep) in rules {
        if re.is_match(repository) {
            return re.replace(repository, rep.as_str()).into_owned();
        }
    }
    repository.to_string()
}

fn parse_endpoint(e: &str) -> Result<Url, String> {
    let (plain_http, rest) = if let Some(r) = e.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("https://") {
        (false, r)
    } else if e.contains("://") {
        return Err("the scheme must be http or https".into());
    } else {
        (false, e)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !matches!(path.trim_end_matches('/'), "" | "/v2") {
        return Err("endpoint paths other than /v2 are not supported".into());
    }
    Ok(Url {
        plain_http,
        host: host.to_string(),
    })
}

/// `base64("user:password")`, as in docker config files.
pub fn decode_basic(b: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The registry host a docker config key names: `https://index.docker.io/v1/` → `docker.io`.
pub fn docker_config_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

/// Credentials from pull secrets (`.dockerconfigjson` or the older `.dockercfg`), by host.
pub fn pull_secret_auths(data: &BTreeMap<String, Vec<u8>>) -> Vec<(String, (String, String))> {
    let mut out = Vec::new();
    let parsed: Option<serde_json::Value> = data
        .get(".dockerconfigjson")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("auths").cloned())
        .or_else(|| {
            data.get(".dockercfg")
                .and_then(|b| serde_json::from_slice(b).ok())
        });
    let Some(serde_json::Value::Object(auths)) = parsed else {
        return out;
    };
    for (key, v) in auths {
        let user = v.get("username").and_then(|u| u.as_str());
        let pass = v.get("password").and_then(|u| u.as_str());
        let cred = match (user, pass) {
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            _ => v
                .get("auth")
                .and_then(|a| a.as_str())
                .and_then(decode_basic),
        };
        if let Some(c) = cred {
            out.push((docker_config_host(&key), c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_then_default_with_rewrite() {
        let r = Registries::parse(
            r#"
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5000", "mirror.example.com/v2"]
    rewrite:
      "^library/(.*)": "mirrored/$1"
configs:
  "127.0.0.1:5000":
    auth: {auth: "dTpw"}
"#,
        )
        .unwrap();
        let e = r.endpoints("docker.io", "library/busybox");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].url(), "http://127.0.0.1:5000/v2/mirrored/busybox");
        assert_eq!(e[1].url(), "https://mirror.example.com/v2/mirrored/busybox");
        assert_eq!(e[2].url(), "https://index.docker.io/v2/library/busybox");
        assert!(e[2].is_default);
        assert_eq!(
            r.config("127.0.0.1:5000").unwrap().auth,
            Some(("u".into(), "p".into()))
        );
        // Other registries: no mirror, the default endpoint only.
        let e = r.endpoints("quay.io", "x/y");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].url(), "https://quay.io/v2/x/y");
    }

    #[test]
    fn wildcard_and_loopback_plain_http() {
        let r = Registries::parse("mirrors:\n  \"*\":\n    endpoint: [\"http://localhost:1\"]\n")
            .unwrap();
        assert_eq!(r.endpoints("ghcr.io", "a").len(), 2);
        let e = Registries::default().endpoints("127.0.0.1:5000", "kite.test/hello");
        assert_eq!(e[0].url(), "http://127.0.0.1:5000/v2/kite.test/hello");
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = Registries::parse("mirror:\n  docker.io: {}\n").unwrap_err();
        assert!(e.contains("mirror"), "{e}");
        let e =
            Registries::parse("mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n").unwrap_err();
        assert!(e.contains("mirrors.docker.io.endpoint[0]"), "{e}");
        let e =
            Registries::parse("mirrors:\n  docker.io:\n    rewrite: {\"(\": \"x\"}\n").unwrap_err();
        assert!(e.contains("mirrors.docker.io.rewrite"), "{e}");
        let e = Registries::parse("configs:\n  a:\n    auth: {auth: \"!!\"}\n").unwrap_err();
        assert!(e.contains("configs.a.auth.auth"), "{e}");
    }

    #[test]
    fn pull_secrets() {
        let cfg = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5001":{"username":"a","password":"b"}}}"#;
        let data = [(".dockerconfigjson".to_string(), cfg.as_bytes().to_vec())].into();
        let mut a = pull_secret_auths(&data);
        a.sort();
        assert_eq!(
            a,
            vec![
                ("127.0.0.1:5001".into(), ("a".into(), "b".into())),
                ("docker.io".into(), ("u".into(), "p".into())),
            ]
        );
    }
}
