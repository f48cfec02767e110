//! Join tokens, in K3s's formats: the secure `K10<sha256 of the CA bundle>::<user>:<secret>`
//! (the agent checks the CA it is served against the hash before it sends anything), a
//! bootstrap token `K10<hash>::<id>.<secret>` made by `kite token create`, or a bare secret
//! (the agent then trusts the CA it is first served, and says so).

use sha2::{Digest, Sha256};

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The hex SHA-256 of the cluster CA bundle, when the token carries one.
    pub ca_hash: Option<String>,
    /// What the agent presents as its password: `secret`, or `id.secret` for a bootstrap
    /// token.
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token's CA hash {0:?} is not 64 hex digits (a token looks like K10<hash>::server:<secret>)")]
    BadHash(String),
    #[error(
        "the token has no secret after its CA hash (a token looks like K10<hash>::server:<secret>)"
    )]
    NoSecret,
}

impl Token {
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = s.strip_prefix("K10") else {
            return Ok(Token {
                ca_hash: None,
                secret: s.to_string(),
            });
        };
        let Some((hash, cred)) = rest.split_once("::") else {
            // A bare secret that happens to start with K10.
            return Ok(Token {
                ca_hash: None,
                secret: s.to_string(),
            });
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadHash(hash.to_string()));
        }
        // `server:<secret>` or `node:<secret>`; a bootstrap token has no user.
        let secret = match cred.split_once(':') {
            Some((_user, secret)) => secret,
            None => cred,
        };
        if secret.is_empty() {
            return Err(TokenError::NoSecret);
        }
        Ok(Token {
            ca_hash: Some(hash.to_ascii_lowercase()),
            secret: secret.to_string(),
        })
    }

    /// Whether `secret` is a bootstrap token's `id.secret` (6 and 16 of `[a-z0-9]`).
    pub fn bootstrap_parts(secret: &str) -> Option<(&str, &str)> {
        let (id, s) = secret.split_once('.')?;
        let ok = |x: &str, n: usize| {
            x.len() == n
                && x.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (ok(id, 6) && ok(s, 16)).then_some((id, s))
    }
}

/// The hex SHA-256 of a CA bundle, as the token carries it.
pub fn ca_hash(ca_pem: &str) -> String {
    hex(&Sha256::digest(ca_pem.as_bytes()))
}

/// A full secure token for `user` (`server` or `node`).
pub fn format(ca_pem: &str, user: &str, secret: &str) -> String {
    format!("K10{}::{user}:{secret}", ca_hash(ca_pem))
}

/// A bootstrap token's text for `id.secret`.
pub fn format_bootstrap(ca_pem: &str, id: &str, secret: &str) -> String {
    format!("K10{}::{id}.{secret}", ca_hash(ca_pem))
}

/// `n` random characters of `[a-z0-9]`.
pub fn random(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A salted hash of a node password, as kept in its Secret: `<salt>$<hex sha256>`.
pub fn hash_password(password: &str) -> String {
    let salt = random(16);
    format!("{salt}${}", salted(&salt, password))
}

/// Whether `password` is the one `stored` (from [`hash_password`]) was made from.
pub fn check_password(stored: &str, password: &str) -> bool {
    match stored.split_once('$') {
        Some((salt, h)) => same_secret(&salted(salt, password), h),
        None => false,
    }
}

fn salted(salt: &str, password: &str) -> String {
    let mut d = Sha256::new();
    d.update(salt.as_bytes());
    d.update(b"$");
    d.update(password.as_bytes());
    hex(&d.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_token_forms() {
        let pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
        let t = Token::parse(&format(pem, "server", "abc")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(ca_hash(pem).as_str()));
        assert_eq!(t.secret, "abc");
        let t = Token::parse(&format_bootstrap(pem, "abcdef", "0123456789abcdef")).unwrap();
        assert_eq!(t.secret, "abcdef.0123456789abcdef");
        assert!(Token::bootstrap_parts(&t.secret).is_some());
        assert_eq!(
            Token::parse("  mysecret\n").unwrap(),
            Token {
                ca_hash: None,
                secret: "mysecret".into()
            }
        );
        assert!(matches!(
            Token::parse("K10abc::server:x"),
            Err(TokenError::BadHash(_))
        ));
        assert_eq!(
            Token::parse(&format!("K10{}::server:", ca_hash(pem))),
            Err(TokenError::NoSecret)
        );
        assert_eq!(Token::parse(""), Err(TokenError::Empty));
        assert!(Token::bootstrap_parts("abc.def").is_none());
    }

    #[test]
    fn passwords_are_salted_and_checked() {
        let a = hash_password("pw");
        let b = hash_password("pw");
        assert_ne!(a, b);
        assert!(check_password(&a, "pw"));
        assert!(!check_password(&a, "pw2"));
        assert!(!check_password("garbage", "pw"));
    }
}
