//! Authentication: HS256 JSON Web Tokens with claims `sub` (the user id), `exp` (required) and an
//! optional display `name`.
//!
//! Written on `hmac` + `sha2` rather than a general JWT crate: roomcast accepts exactly one
//! algorithm, so the whole verifier is a split, a constant-time MAC check and three claims, and
//! `alg: none` or an RSA/HMAC confusion cannot happen because nothing else is implemented.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::ids::{IdError, UserId};

type HmacSha256 = Hmac<Sha256>;

/// Longest display name accepted from a token, in characters.
pub const NAME_MAX_CHARS: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm {0:?} (only HS256 is accepted)")]
    UnsupportedAlg(String),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token claim {0} is missing or invalid")]
    BadClaim(&'static str),
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(IdError),
}

/// Who a verified token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub name: Option<Arc<str>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    name: Option<String>,
}

/// Verifies and issues tokens for one secret.
pub struct JwtAuth {
    mac: HmacSha256,
}

impl JwtAuth {
    pub fn new(secret: &[u8]) -> Self {
        JwtAuth {
            // HMAC accepts keys of any length.
            mac: HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!()),
        }
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Identity, AuthError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };
        let header = decode_part(h).ok_or(AuthError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|_| AuthError::Malformed("header is not JSON"))?;
        if header.alg != "HS256" {
            return Err(AuthError::UnsupportedAlg(header.alg));
        }
        let sig = decode_part(s).ok_or(AuthError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..h.len() + 1 + c.len()]);
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;

        let claims = decode_part(c).ok_or(AuthError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&claims)
            .map_err(|_| AuthError::Malformed("claims are not a JSON object"))?;
        let exp = claims
            .exp
            .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)))
            .ok_or(AuthError::BadClaim("exp"))?;
        if exp.saturating_add(LEEWAY_S) <= now_s {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            let nbf = nbf.as_f64().ok_or(AuthError::BadClaim("nbf"))? as u64;
            if nbf > now_s + LEEWAY_S {
                return Err(AuthError::NotYetValid);
            }
        }
        let sub = claims.sub.ok_or(AuthError::BadClaim("sub"))?;
        let user = UserId::parse(&sub).map_err(AuthError::BadSubject)?;
        let name = match claims.name {
            None => None,
            Some(n) => {
                let n = n.trim();
                if n.is_empty() {
                    None
                } else if n.chars().count() > NAME_MAX_CHARS || n.chars().any(char::is_control) {
                    return Err(AuthError::BadClaim("name"));
                } else {
                    Some(Arc::from(n))
                }
            }
        };
        Ok(Identity { user, name, exp })
    }

    /// Issues a token (for `roomcast token`, the dev token endpoint and tests).
    pub fn issue(&self, user: &UserId, name: Option<&str>, exp: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let mut claims = serde_json::json!({ "sub": user.as_str(), "exp": exp });
        if let Some(name) = name {
            claims["name"] = name.into();
        }
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }
}

fn decode_part(part: &str) -> Option<Vec<u8>> {
    // Tolerate padding, which some encoders add.
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn issue_then_verify() {
        let a = JwtAuth::new(b"secret");
        let t = a.issue(&alice(), Some("Alice"), NOW + 60);
        let id = a.verify(&t, NOW).unwrap();
        assert_eq!(id.user, alice());
        assert_eq!(id.name.as_deref(), Some("Alice"));
        assert_eq!(id.exp, NOW + 60);
    }

    #[test]
    fn rejects_expired_wrong_key_and_tampering() {
        let a = JwtAuth::new(b"secret");
        assert_eq!(
            a.verify(&a.issue(&alice(), None, NOW - 60), NOW),
            Err(AuthError::Expired)
        );
        let other = JwtAuth::new(b"other").issue(&alice(), None, NOW + 60);
        assert_eq!(a.verify(&other, NOW), Err(AuthError::BadSignature));
        let t = a.issue(&alice(), None, NOW + 60);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"mallory","exp":{}}}"#, NOW + 60));
        parts[1] = &forged;
        assert_eq!(
            a.verify(&parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        let a = JwtAuth::new(b"secret");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"a","exp":9999999999}"#)
        );
        assert_eq!(
            a.verify(&none, NOW),
            Err(AuthError::UnsupportedAlg("none".into()))
        );
        for bad in ["", "a.b", "a.b.c.d", "!!!.b.c", "e30.e30.e30"] {
            assert!(a.verify(bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn requires_sub_and_exp() {
        let a = JwtAuth::new(b"k");
        let sign = |claims: &str| {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
            let c = URL_SAFE_NO_PAD.encode(claims);
            let mut mac = a.mac.clone();
            mac.update(format!("{h}.{c}").as_bytes());
            format!(
                "{h}.{c}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        };
        assert_eq!(
            a.verify(&sign(r#"{"sub":"a"}"#), NOW),
            Err(AuthError::BadClaim("exp"))
        );
        assert_eq!(
            a.verify(&sign(r#"{"exp":9999999999}"#), NOW),
            Err(AuthError::BadClaim("sub"))
        );
        assert!(matches!(
            a.verify(&sign(r#"{"sub":"","exp":9999999999}"#), NOW),
            Err(AuthError::BadSubject(_))
        ));
        assert_eq!(
            a.verify(
                &sign(r#"{"sub":"a","exp":9999999999,"name":"x\u0007"}"#),
                NOW
            ),
            Err(AuthError::BadClaim("name"))
        );
        assert_eq!(
            a.verify(
                &sign(r#"{"sub":"a","exp":9999999999,"nbf":9999999990}"#),
                NOW
            ),
            Err(AuthError::NotYetValid)
        );
        assert!(
            a.verify(&sign(r#"{"sub":"a","exp":9999999999.5}"#), NOW)
                .is_ok()
        );
    }
}
