//! Authentication: verifies client tokens (JSON Web Tokens) and issues HS256 tokens for
//! development. Signatures, headers and the `aud`/`iss` checks are the `jsonwebtoken` crate's;
//! this module decides which keys and algorithms are accepted and what the claims mean.
//!
//! The allow-list is explicit: a verifier holds one HS256 secret, one RS256 or ES256 public key,
//! or a JSON Web Key Set whose keys are chosen by the token's `kid`, and every key verifies only
//! tokens whose header names that key's own algorithm — `alg: none`, HS256 signed with a public
//! key, or any other algorithm is refused before a signature is checked. Claims: `sub` (a valid
//! [`UserId`]), `exp` (required), optional `nbf`, optional display `name`, with [`LEEWAY_S`] of
//! clock skew; `aud` and `iss` must match when the verifier is configured with them. This module
//! reads no files and no clock: callers pass key material and the time.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{IdError, UserId};

pub use crate::text::NAME_MAX_CHARS;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 5;
/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub const HS256_MIN_SECRET_BYTES: usize = 32;

/// The token algorithms roomcast accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenAlg {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, verified with an RSA public key.
    RS256,
    /// ECDSA on P-256 with SHA-256, verified with an EC public key.
    ES256,
}

impl TokenAlg {
    pub const ALL: [TokenAlg; 3] = [TokenAlg::HS256, TokenAlg::RS256, TokenAlg::ES256];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlg::HS256 => "HS256",
            TokenAlg::RS256 => "RS256",
            TokenAlg::ES256 => "ES256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            TokenAlg::HS256 => Algorithm::HS256,
            TokenAlg::RS256 => Algorithm::RS256,
            TokenAlg::ES256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for TokenAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenAlg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unsupported algorithm {s:?} (expected HS256, RS256 or ES256)"))
    }
}

/// Why a token was refused; the message is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlg(String),
    #[error("token header has no kid (key id), which this server needs to pick a key")]
    MissingKeyId,
    #[error("token key id {0:?} is not known")]
    UnknownKeyId(String),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token claim {0} is missing or invalid")]
    BadClaim(&'static str),
    #[error("token audience (aud) is missing or not this server's")]
    BadAudience,
    #[error("token issuer (iss) is missing or not the expected one")]
    BadIssuer,
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(IdError),
    #[error("token name is not a valid display name: {0}")]
    BadName(String),
}

/// Why key material was refused (at start-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the HS256 secret is {len} bytes long; it must be at least {HS256_MIN_SECRET_BYTES} bytes"
    )]
    SecretTooShort { len: usize },
    #[error("{alg} needs a public key, not a shared secret")]
    NotPublicKeyAlg { alg: TokenAlg },
    #[error("not a valid {alg} public key in PEM form: {reason}")]
    Pem { alg: TokenAlg, reason: String },
    #[error("invalid JSON Web Key Set: {0}")]
    Jwks(String),
    #[error("JSON Web Key Set key {key}: {reason}")]
    JwksKey { key: String, reason: String },
}

/// Why no token could be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error(
        "this server verifies tokens with public keys ({0}) and holds no key to sign with; tokens come from the platform's auth service"
    )]
    NoSigningKey(String),
    #[error("cannot encode the token: {0}")]
    Encode(String),
}

/// Who a verified token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub name: Option<Arc<str>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Claims are read as JSON values so that each bad one gets its own error.
#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    name: Option<Value>,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

struct VerifyKey {
    alg: TokenAlg,
    key: DecodingKey,
}

enum Keys {
    One(VerifyKey),
    ByKid(HashMap<String, VerifyKey>),
}

/// Verifies tokens with one key or a key set, and issues HS256 tokens when it holds a secret.
pub struct JwtAuth {
    keys: Keys,
    signer: Option<EncodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl JwtAuth {
    /// HS256 with a shared secret of at least [`HS256_MIN_SECRET_BYTES`] bytes; can also issue.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < HS256_MIN_SECRET_BYTES {
            return Err(KeyError::SecretTooShort { len: secret.len() });
        }
        // jsonwebtoken refuses only empty secrets, which the length check already did.
        let too_short = |_| KeyError::SecretTooShort { len: secret.len() };
        Ok(JwtAuth {
            keys: Keys::One(VerifyKey {
                alg: TokenAlg::HS256,
                key: DecodingKey::from_secret(secret).map_err(too_short)?,
            }),
            signer: Some(EncodingKey::from_secret(secret).map_err(too_short)?),
            audience: None,
            issuer: None,
        })
    }

    /// RS256 or ES256 with one public key in PEM form (`-----BEGIN PUBLIC KEY-----`, or
    /// `BEGIN RSA PUBLIC KEY` for RSA); verifies only.
    pub fn public_key_pem(alg: TokenAlg, pem: &[u8]) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::Pem { alg, reason };
        let key = match alg {
            TokenAlg::HS256 => return Err(KeyError::NotPublicKeyAlg { alg }),
            TokenAlg::RS256 => DecodingKey::from_rsa_pem(pem),
            TokenAlg::ES256 => DecodingKey::from_ec_pem(pem),
        }
        .map_err(|e| bad(e.to_string()))?;
        probe(alg, &key).map_err(bad)?;
        Ok(Self::verify_only(Keys::One(VerifyKey { alg, key })))
    }

    /// A JSON Web Key Set (`{"keys": [...]}`): tokens pick a key by their header's `kid`, and
    /// each key accepts only its own algorithm — RSA keys RS256, P-256 EC keys ES256, `oct`
    /// keys HS256 (at least 32 bytes). Every key needs a unique `kid`; a key whose `alg` names
    /// another algorithm, or whose `use` is not `sig`, is refused rather than skipped.
    pub fn jwks(json: &[u8]) -> Result<Self, KeyError> {
        let set: Value =
            serde_json::from_slice(json).map_err(|e| KeyError::Jwks(format!("not JSON: {e}")))?;
        let Some(list) = set.get("keys").and_then(Value::as_array) else {
            return Err(KeyError::Jwks(
                "expected an object with a \"keys\" array".into(),
            ));
        };
        if list.is_empty() {
            return Err(KeyError::Jwks("the \"keys\" array is empty".into()));
        }
        let mut keys = HashMap::with_capacity(list.len());
        for (i, jwk) in list.iter().enumerate() {
            let kid = jwk
                .get("kid")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty());
            let name = match kid {
                Some(k) => format!("{k:?}"),
                None => format!("#{i}"),
            };
            let err = |reason: String| KeyError::JwksKey {
                key: name.clone(),
                reason,
            };
            let Some(kid) = kid else {
                return Err(err("has no kid (key id); tokens choose keys by kid".into()));
            };
            let key = jwk_key(jwk).map_err(&err)?;
            if keys.insert(kid.to_owned(), key).is_some() {
                return Err(err("the kid appears more than once".into()));
            }
        }
        Ok(Self::verify_only(Keys::ByKid(keys)))
    }

    fn verify_only(keys: Keys) -> Self {
        JwtAuth {
            keys,
            signer: None,
            audience: None,
            issuer: None,
        }
    }

    /// Requires the `aud` claim to be (or, as an array, contain) `audience`. `None`: `aud` is
    /// not checked.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Requires the `iss` claim to equal `issuer`. `None`: `iss` is not checked.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Whether [`JwtAuth::issue`] works (an HS256 secret is configured).
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// What this verifier accepts, for logs: `HS256 secret`, `ES256 public key`, `JWKS (3
    /// keys: ES256, RS256)`.
    pub fn describe(&self) -> String {
        match &self.keys {
            Keys::One(k) if k.alg == TokenAlg::HS256 => "HS256 secret".into(),
            Keys::One(k) => format!("{} public key", k.alg),
            Keys::ByKid(map) => {
                let mut algs: Vec<&str> = map.values().map(|k| k.alg.as_str()).collect();
                algs.sort_unstable();
                algs.dedup();
                format!("JWKS ({} keys: {})", map.len(), algs.join(", "))
            }
        }
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Identity, AuthError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        let key = match &self.keys {
            Keys::One(k) => k,
            Keys::ByKid(map) => {
                let kid = header.kid.as_deref().ok_or(AuthError::MissingKeyId)?;
                map.get(kid)
                    .ok_or_else(|| AuthError::UnknownKeyId(kid.to_owned()))?
            }
        };
        if header.alg != key.alg.jwt() {
            return Err(AuthError::UnsupportedAlg(format!("{:?}", header.alg)));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg))
            .map_err(|e| decode_error(e.into_kind(), key.alg))?
            .claims;
        check_claims(claims, now_s)
    }

    fn validation(&self, alg: TokenAlg) -> Validation {
        let mut v = Validation::new(alg.jwt());
        // Times are checked in `check_claims` against the caller's clock, with our own errors.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        v
    }

    /// Issues an HS256 token (for `roomcast token`, the dev token endpoint and tests).
    pub fn issue(&self, user: &UserId, name: Option<&str>, exp: u64) -> Result<String, IssueError> {
        let Some(signer) = &self.signer else {
            return Err(IssueError::NoSigningKey(self.describe()));
        };
        let claims = IssuedClaims {
            sub: user.as_str(),
            exp,
            name,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signer)
            .map_err(|e| IssueError::Encode(e.to_string()))
    }
}

/// Builds the key of one JWKS entry, with the algorithm its type allows.
fn jwk_key(jwk: &Value) -> Result<VerifyKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let need = |name: &str| field(name).ok_or_else(|| format!("has no {name:?}"));
    if let Some(u) = field("use").filter(|u| *u != "sig") {
        return Err(format!(
            "has \"use\": {u:?}; only signature keys (\"sig\") are accepted"
        ));
    }
    let kty = need("kty")?;
    let (alg, key) = match kty {
        "RSA" => (
            TokenAlg::RS256,
            DecodingKey::from_rsa_components(need("n")?, need("e")?),
        ),
        "EC" => {
            let crv = need("crv")?;
            if crv != "P-256" {
                return Err(format!("curve {crv:?} is not accepted (ES256 needs P-256)"));
            }
            (
                TokenAlg::ES256,
                DecodingKey::from_ec_components(need("x")?, need("y")?),
            )
        }
        "oct" => {
            let secret = URL_SAFE_NO_PAD
                .decode(need("k")?)
                .map_err(|_| "\"k\" is not base64url".to_owned())?;
            if secret.len() < HS256_MIN_SECRET_BYTES {
                return Err(format!(
                    "the HS256 secret is {} bytes long; it must be at least {HS256_MIN_SECRET_BYTES} bytes",
                    secret.len()
                ));
            }
            (TokenAlg::HS256, DecodingKey::from_secret(&secret))
        }
        other => {
            return Err(format!(
                "key type {other:?} is not accepted (RSA, EC or oct)"
            ));
        }
    };
    if let Some(named) = field("alg")
        && named != alg.as_str()
    {
        return Err(format!(
            "\"alg\": {named:?} is not accepted for a {kty} key (only {alg})"
        ));
    }
    let key = key.map_err(|e| format!("not a valid {kty} key: {e}"))?;
    probe(alg, &key)?;
    Ok(VerifyKey { alg, key })
}

/// Fails if `key` cannot verify `alg` signatures at all (an EC point not on P-256, …), so a
/// broken key is refused at start-up instead of refusing every token.
fn probe(alg: TokenAlg, key: &DecodingKey) -> Result<(), String> {
    jsonwebtoken::crypto::verify("AAAA", b"roomcast key probe", key, alg.jwt())
        .map(|_| ())
        .map_err(|e| format!("not usable for {alg}: {e}"))
}

/// The error for a header `jsonwebtoken` could not read: an algorithm it does not know (such as
/// `none`) is reported by name, anything else (a `kid` that is not a string, …) as malformed.
fn header_error(token: &str) -> AuthError {
    if token.split('.').count() != 3 {
        return AuthError::Malformed("expected three dot-separated parts");
    }
    let header = token.split('.').next().unwrap_or_default();
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) else {
        return AuthError::Malformed("header is not base64url");
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => match v.get("alg").and_then(Value::as_str) {
            Some(alg) if Algorithm::from_str(alg).is_err() => {
                AuthError::UnsupportedAlg(alg.to_owned())
            }
            Some(_) => AuthError::Malformed("header is not a valid JWT header"),
            None => AuthError::Malformed("header has no alg"),
        },
        Err(_) => AuthError::Malformed("header is not JSON"),
    }
}

fn decode_error(kind: jsonwebtoken::errors::ErrorKind, alg: TokenAlg) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidToken => AuthError::Malformed("expected three dot-separated parts"),
        K::Base64(_) | K::Utf8(_) => AuthError::Malformed("a part is not base64url"),
        K::Json(_) => AuthError::Malformed("claims are not a JSON object"),
        // Not reached: the header's alg was compared with the key's before.
        K::InvalidAlgorithm | K::MissingAlgorithm => AuthError::UnsupportedAlg(alg.to_string()),
        K::InvalidAudience => AuthError::BadAudience,
        K::InvalidIssuer => AuthError::BadIssuer,
        K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) if c == "aud" => {
            AuthError::BadAudience
        }
        K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) if c == "iss" => AuthError::BadIssuer,
        // InvalidSignature, and key errors a key that passed `probe` only shows for a bad
        // signature (an ECDSA signature of the wrong length, …).
        _ => AuthError::BadSignature,
    }
}

/// A JSON number as whole seconds (fractions dropped; negative or non-numbers refused).
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn check_claims(claims: Claims, now_s: u64) -> Result<Identity, AuthError> {
    let exp = claims
        .exp
        .as_ref()
        .and_then(seconds)
        .ok_or(AuthError::BadClaim("exp"))?;
    if exp.saturating_add(LEEWAY_S) <= now_s {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = &claims.nbf {
        let nbf = seconds(nbf).ok_or(AuthError::BadClaim("nbf"))?;
        if nbf > now_s.saturating_add(LEEWAY_S) {
            return Err(AuthError::NotYetValid);
        }
    }
    let sub = claims
        .sub
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(AuthError::BadClaim("sub"))?;
    let user = UserId::parse(sub).map_err(AuthError::BadSubject)?;
    let name = match &claims.name {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.trim().is_empty() => None,
        Some(Value::String(n)) => Some(Arc::from(
            crate::text::check_name(n).map_err(AuthError::BadName)?,
        )),
        Some(_) => return Err(AuthError::BadClaim("name")),
    };
    Ok(Identity { user, name, exp })
}

#[cfg(test)]
mod tests;
