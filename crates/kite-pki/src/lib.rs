//! Cluster PKI: the server CA (signs serving certificates), the client CA (signs the
//! certificates users and components authenticate with), the API server's serving
//! certificate, client certificates with upstream identities, and kubeconfig files.
//!
//! Everything lives as PEM files in one directory (`<data-dir>/server/tls`) and is reused on
//! restart; the serving certificate is issued again when the wanted SANs change.

pub mod tls;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}: not a usable PEM certificate or key")]
    BadPem(PathBuf),
}

pub type Result<T> = std::result::Result<T, PkiError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically (temp file + rename) with `mode`.
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// A certificate and its private key, as PEM.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertKey {
    fn load(dir: &Path, name: &str) -> Result<Option<CertKey>> {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        if !c.exists() || !k.exists() {
            return Ok(None);
        }
        Ok(Some(CertKey {
            cert_pem: fs::read_to_string(&c).map_err(io(&c))?,
            key_pem: fs::read_to_string(&k).map_err(io(&k))?,
        }))
    }

    fn save(&self, dir: &Path, name: &str) -> Result<()> {
        write_file_atomic(
            &dir.join(format!("{name}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )?;
        write_file_atomic(
            &dir.join(format!("{name}.crt")),
            self.cert_pem.as_bytes(),
            0o644,
        )
    }

    fn issuer(&self, path: &Path) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|_| PkiError::BadPem(path.into()))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|_| PkiError::BadPem(path.into()))
    }
}

fn new_ca(cn: &str) -> Result<CertKey> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The cluster's certificate authorities and the API server's serving certificate.
pub struct Pki {
    dir: PathBuf,
    pub server_ca: CertKey,
    pub client_ca: CertKey,
    pub serving: CertKey,
}

const SANS_FILE: &str = "serving-kube-apiserver.sans";

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing. `sans` are DNS names and IP
    /// addresses for the serving certificate; it is issued again if they changed.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = |name: &str, cn: &str| -> Result<CertKey> {
            match CertKey::load(dir, name)? {
                Some(c) => Ok(c),
                None => {
                    let c = new_ca(cn)?;
                    c.save(dir, name)?;
                    Ok(c)
                }
            }
        };
        let server_ca = ca("server-ca", "kite-server-ca")?;
        let client_ca = ca("client-ca", "kite-client-ca")?;
        let wanted: BTreeSet<&str> = sans.iter().map(String::as_str).collect();
        let wanted_text = wanted.iter().copied().collect::<Vec<_>>().join("\n");
        let sans_path = dir.join(SANS_FILE);
        let have_text = fs::read_to_string(&sans_path).unwrap_or_default();
        let serving = match CertKey::load(dir, "serving-kube-apiserver")? {
            Some(c) if have_text == wanted_text => c,
            _ => {
                let issuer = server_ca.issuer(&dir.join("server-ca.crt"))?;
                let c = issue(
                    &issuer,
                    "kube-apiserver",
                    &[],
                    &wanted.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    ExtendedKeyUsagePurpose::ServerAuth,
                )?;
                c.save(dir, "serving-kube-apiserver")?;
                write_file_atomic(&sans_path, wanted_text.as_bytes(), 0o644)?;
                c
            }
        };
        Ok(Pki {
            dir: dir.to_path_buf(),
            server_ca,
            client_ca,
            serving,
        })
    }

    /// The key that signs ServiceAccount tokens (ECDSA P-256, PKCS#8 DER), kept as
    /// `service-account.key` and made on first use. Its loss invalidates every token.
    pub fn service_account_key(&self) -> Result<Vec<u8>> {
        let path = self.dir.join("service-account.key");
        let pem = match fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let pem = key.serialize_pem();
                write_file_atomic(&path, pem.as_bytes(), 0o600)?;
                pem
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let key = KeyPair::from_pem(&pem).map_err(|_| PkiError::BadPem(path.clone()))?;
        Ok(key.serialize_der())
    }

    /// A serving certificate for `sans` from the server CA, kept as `serving-<file>` and
    /// issued again when the names change (a kubelet's, for its node's names and addresses).
    pub fn serving_cert(&self, file: &str, cn: &str, sans: &[String]) -> Result<CertKey> {
        let name = format!("serving-{file}");
        let wanted: BTreeSet<&str> = sans.iter().map(String::as_str).collect();
        let wanted_text = wanted.iter().copied().collect::<Vec<_>>().join("\n");
        let sans_path = self.dir.join(format!("{name}.sans"));
        if let Some(c) = CertKey::load(&self.dir, &name)? {
            if fs::read_to_string(&sans_path).unwrap_or_default() == wanted_text {
                return Ok(c);
            }
        }
        let issuer = self.server_ca.issuer(&self.dir.join("server-ca.crt"))?;
        let c = issue(
            &issuer,
            cn,
            &[],
            &wanted.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        c.save(&self.dir, &name)?;
        write_file_atomic(&sans_path, wanted_text.as_bytes(), 0o644)?;
        Ok(c)
    }

    /// A client certificate for `cn` in groups `orgs`, kept as `client-<file>` in the PKI
    /// directory and reused if it is there.
    pub fn client_cert(&self, file: &str, cn: &str, orgs: &[&str]) -> Result<CertKey> {
        let name = format!("client-{file}");
        if let Some(c) = CertKey::load(&self.dir, &name)? {
            return Ok(c);
        }
        let issuer = self.client_ca.issuer(&self.dir.join("client-ca.crt"))?;
        let c = issue(&issuer, cn, orgs, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        c.save(&self.dir, &name)?;
        Ok(c)
    }
}

fn leaf_params(
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for s in sans {
        params
            .subject_alt_names
            .push(match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(s.clone().try_into()?),
            });
    }
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertKey> {
    let params = leaf_params(cn, orgs, sans, usage)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a node asks to be certified as (the subject and names are the server's choice,
/// not the request's: only the request's public key is used).
pub enum NodeCert<'a> {
    /// A client certificate for `cn` in groups `orgs`.
    Client { cn: &'a str, orgs: &'a [&'a str] },
    /// A serving certificate for `cn` with the names and addresses `sans`.
    Serving { cn: &'a str, sans: &'a [String] },
}

impl Pki {
    /// Signs the public key of `csr_pem` (a PKCS#10 request) as `what`, valid for
    /// `valid_secs` from now: the server's half of a node joining.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        what: NodeCert<'_>,
        valid_secs: i64,
    ) -> Result<String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let (ca, ca_file, cn, orgs, sans, usage): (_, _, _, &[&str], &[String], _) = match what {
            NodeCert::Client { cn, orgs } => (
                &self.client_ca,
                "client-ca.crt",
                cn,
                orgs,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            NodeCert::Serving { cn, sans } => (
                &self.server_ca,
                "server-ca.crt",
                cn,
                &[],
                sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        };
        let issuer = ca.issuer(&self.dir.join(ca_file))?;
        let mut params = leaf_params(cn, orgs, sans, usage)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // A little slack for clocks that disagree.
        params.not_before = unix_to_datetime(now - 60);
        params.not_after = unix_to_datetime(now + valid_secs);
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }
}

fn unix_to_datetime(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new private key and a certificate request for it (PEM, PEM): the node's half of
/// joining. The server decides the subject; the request only carries the key.
pub fn new_request() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// When a PEM certificate stops being valid (seconds since the epoch).
pub fn not_after(cert_pem: &str) -> Option<i64> {
    validity(cert_pem).map(|(_, a)| a)
}

/// A PEM certificate's validity: not before, not after (seconds since the epoch).
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The user a client certificate names: CN is the user, each O a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Reads user and groups from a DER client certificate (already verified by TLS).
pub fn identity_from_der(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(CertIdentity { user, groups })
}

/// A kubeconfig with one cluster, one user (client certificate) and one context, all named
/// `default` as K3s writes it.
pub fn kubeconfig(server_url: &str, ca_pem: &str, client: &CertKey) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        server_url,
        b64(&client.cert_pem),
        b64(&client.key_pem)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_signed_with_the_servers_subject_and_a_bounded_life() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let (_key, csr) = new_request().unwrap();
        let cert = pki
            .sign_request(
                &csr,
                NodeCert::Client {
                    cn: "system:node:a",
                    orgs: &["system:nodes"],
                },
                365 * 86400,
            )
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.user, "system:node:a");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let left = not_after(&cert).unwrap() - now;
        assert!((364 * 86400..=366 * 86400).contains(&left), "{left}");
        assert!(pki
            .sign_request("not a request", NodeCert::Client { cn: "x", orgs: &[] }, 1)
            .is_err());
    }

    #[test]
    fn creates_then_reuses_and_reissues_on_new_sans() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = Pki::load_or_create(dir.path(), &sans).unwrap();
        let b = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        assert_eq!(a.server_ca.cert_pem, b.server_ca.cert_pem);
        let mut more = sans.clone();
        more.push("kite.example".into());
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_ne!(a.serving.cert_pem, c.serving.cert_pem);
        assert_eq!(a.server_ca.cert_pem, c.server_ca.cert_pem);
    }

    #[test]
    fn client_cert_carries_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let c = pki
            .client_cert("admin", "system:admin", &["system:masters"])
            .unwrap();
        let der = rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.user, "system:admin");
        assert_eq!(id.groups, vec!["system:masters".to_string()]);
    }
}
