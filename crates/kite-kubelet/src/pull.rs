//! Pulling images from registries with `oci-client` into containerd: the endpoints come
//! from `registries.yaml` (mirrors first, the registry itself last), the credentials from
//! the pod's imagePullSecrets or that file; the blobs then take the same path as an
//! imported archive (`images::store_image`): Content, Snapshots + Diff, GC labels.

use crate::containerd::Containerd;
use crate::images::{self, Archived, Blobs};
use crate::registries::{Endpoint, Registries};
use containerd_client::types::Descriptor;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};
use std::time::Duration;

/// Credentials by registry host, from pull secrets.
pub type Creds = [(String, (String, String))];

/// A normalized image name split into its parts.
#[derive(Debug, PartialEq)]
pub struct Name<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits `registry/repo[:tag][@digest]` (as `images::normalize` writes it).
pub fn split(name: &str) -> Option<Name<'_>> {
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    let (registry, path) = rest.split_once('/')?;
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match path[slash..].rfind(':') {
        Some(i) => (&path[..slash + i], Some(&path[slash + i + 1..])),
        None => (path, None),
    };
    if repository.is_empty() {
        return None;
    }
    Some(Name {
        registry,
        repository,
        tag,
        digest,
    })
}

/// What a pull did.
pub struct Pulled {
    /// Bytes of manifest, config and layers, as upstream's "Image size".
    pub size: u64,
}

/// Pulls `name` (normalized) and makes containerd's image `name` point at it.
/// The error is the one line that goes into the pod's event and status.
pub async fn pull(
    cd: &Containerd,
    regs: &Registries,
    name: &str,
    creds: &Creds,
) -> Result<Pulled, String> {
    let n = split(name).ok_or_else(|| format!("invalid reference format: {name}"))?;
    let mut errors = Vec::new();
    for ep in regs.endpoints(n.registry, n.repository) {
        let span = tracing::info_span!("pull", image = name, endpoint = %ep.url());
        let _g = span.enter();
        match pull_from(cd, regs, &n, &ep, creds).await {
            Ok(p) => return Ok(p),
            Err(e) => {
                tracing::info!(error = %e, "pull failed at this endpoint");
                errors.push(format!("{}: {e}", ep.url()));
            }
        }
    }
    Err(format!(
        "failed to pull and unpack image \"{name}\": {}",
        errors.join("; ")
    ))
}

fn client_for(regs: &Registries, n: &Name, ep: &Endpoint) -> Client {
    let cfg = regs
        .config(&ep.host)
        .or_else(|| ep.is_default.then(|| regs.config(n.registry)).flatten());
    let mut config = ClientConfig {
        protocol: if ep.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("kite/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    if let Some(c) = cfg {
        config.accept_invalid_certificates = c.insecure_skip_verify;
        if let Some(pem) = &c.ca_pem {
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            });
        }
    }
    Client::new(config)
}

fn auth_for(regs: &Registries, n: &Name, ep: &Endpoint, creds: &Creds) -> RegistryAuth {
    let hosts = [Some(ep.host.as_str()), ep.is_default.then_some(n.registry)];
    for h in hosts.into_iter().flatten() {
        if let Some((_, (u, p))) = creds.iter().find(|(k, _)| k == h) {
            return RegistryAuth::Basic(u.clone(), p.clone());
        }
    }
    for h in hosts.into_iter().flatten() {
        if let Some((u, p)) = regs.config(h).and_then(|c| c.auth.clone()) {
            return RegistryAuth::Basic(u, p);
        }
    }
    RegistryAuth::Anonymous
}

const ACCEPTED: [&str; 4] = [
    images::MT_OCI_INDEX,
    images::MT_DOCKER_LIST,
    images::MT_OCI_MANIFEST,
    images::MT_DOCKER_MANIFEST,
];

/// The media type a manifest declares, or the one its shape implies.
fn media_type(raw: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Ok(m.to_string());
    }
    Ok(if v.get("manifests").is_some() {
        images::MT_OCI_INDEX
    } else {
        images::MT_OCI_MANIFEST
    }
    .to_string())
}

async fn pull_from(
    cd: &Containerd,
    regs: &Registries,
    n: &Name<'_>,
    ep: &Endpoint,
    creds: &Creds,
) -> Result<Pulled, String> {
    let client = client_for(regs, n, ep);
    let auth = auth_for(regs, n, ep, creds);
    let reference = match n.digest {
        Some(d) => Reference::with_digest(ep.host.clone(), ep.repository.clone(), d.into()),
        None => Reference::with_tag(
            ep.host.clone(),
            ep.repository.clone(),
            n.tag.unwrap_or("latest").into(),
        ),
    };
    let (raw, _) = client
        .pull_manifest_raw(&reference, &auth, &ACCEPTED)
        .await
        .map_err(|e| explain(&e))?;
    let raw = raw.to_vec();
    let top = Descriptor {
        media_type: media_type(&raw)?,
        digest: images::digest(&raw),
        size: raw.len() as i64,
        annotations: Default::default(),
    };
    if let Some(d) = n.digest {
        if d != top.digest {
            return Err(format!("the manifest's digest is {}, not {d}", top.digest));
        }
    }
    let mut blobs = Blobs::new();
    let mut size = raw.len() as u64;
    let mut manifest_raw = raw.clone();
    blobs.insert(top.digest.clone(), (top.media_type.clone(), raw));
    if top.media_type == images::MT_OCI_INDEX || top.media_type == images::MT_DOCKER_LIST {
        let index: ImageIndex = serde_json::from_slice(&manifest_raw)
            .map_err(|e| format!("parsing the image index: {e}"))?;
        let m = images::pick_platform(&index).map_err(|e| e.to_string())?;
        let r = Reference::with_digest(ep.host.clone(), ep.repository.clone(), m.digest.clone());
        let (raw, _) = client
            .pull_manifest_raw(&r, &auth, &ACCEPTED)
            .await
            .map_err(|e| explain(&e))?;
        let raw = raw.to_vec();
        if images::digest(&raw) != m.digest {
            return Err(format!("manifest {} does not match its digest", m.digest));
        }
        size += raw.len() as u64;
        manifest_raw = raw.clone();
        blobs.insert(m.digest.clone(), (m.media_type.clone(), raw));
    }
    let manifest: ImageManifest = serde_json::from_slice(&manifest_raw)
        .map_err(|e| format!("parsing the image manifest: {e}"))?;
    let mut wanted = vec![manifest.config().digest().to_string()];
    for l in manifest.layers() {
        size += l.size();
        if !images::has_blob(cd, l.digest().as_ref()).await {
            wanted.push(l.digest().to_string());
        }
    }
    size += manifest.config().size();
    for d in wanted {
        let mut buf = Vec::new();
        client
            .pull_blob(&reference, d.as_str(), &mut buf)
            .await
            .map_err(|e| format!("fetching blob {d}: {}", explain(&e)))?;
        blobs.insert(d, (String::new(), buf));
    }
    let name = images::normalize(&format!(
        "{}/{}{}",
        n.registry,
        n.repository,
        match (n.tag, n.digest) {
            (_, Some(d)) => format!("@{d}"),
            (Some(t), None) => format!(":{t}"),
            (None, None) => ":latest".into(),
        }
    ));
    let img = Archived {
        names: vec![name],
        manifest: top,
    };
    images::store(cd, vec![img], blobs)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(Pulled { size })
}

/// A registry error as the reason a user can act on: unknown host, 401, not found.
fn explain(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::UnauthorizedError { url } => format!("401 Unauthorized ({url})"),
        E::AuthenticationFailure(m) => format!("401 Unauthorized: {}", m.trim()),
        E::ImageManifestNotFoundError(m) => format!("not found: {}", m.trim()),
        E::ServerError { code: 401, url, .. } => format!("401 Unauthorized ({url})"),
        E::ServerError { code: 404, url, .. } => format!("not found ({url})"),
        E::RegistryError { envelope, url } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| format!("{:?}: {}", x.code, x.message))
                .collect();
            let unauthorized = codes.iter().any(|c| c.contains("Unauthorized"));
            let unknown = codes.iter().any(|c| c.contains("Unknown"));
            match (unauthorized, unknown) {
                (true, _) => format!("401 Unauthorized ({url})"),
                (_, true) => format!("not found ({url}): {}", codes.join(", ")),
                _ => format!("{url}: {}", codes.join(", ")),
            }
        }
        E::RequestError(r) => {
            let mut chain = Vec::new();
            let mut s: Option<&dyn std::error::Error> = Some(r);
            while let Some(x) = s {
                chain.push(x.to_string());
                s = x.source();
            }
            let all = chain.join(": ");
            let low = all.to_lowercase();
            if low.contains("dns error") || low.contains("failed to lookup address") {
                format!("no such host ({all})")
            } else if low.contains("connection refused") {
                format!("connection refused ({all})")
            } else {
                all
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names() {
        assert_eq!(
            split("docker.io/library/busybox:1.36").unwrap(),
            Name {
                registry: "docker.io",
                repository: "library/busybox",
                tag: Some("1.36"),
                digest: None
            }
        );
        let n = split("127.0.0.1:5000/a/b@sha256:ab").unwrap();
        assert_eq!(
            (n.registry, n.repository, n.tag, n.digest),
            ("127.0.0.1:5000", "a/b", None, Some("sha256:ab"))
        );
        assert!(split("nohost").is_none());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type(br#"{"manifests":[]}"#).unwrap(),
            images::MT_OCI_INDEX
        );
        assert_eq!(
            media_type(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#)
                .unwrap(),
            images::MT_DOCKER_MANIFEST
        );
    }
}
