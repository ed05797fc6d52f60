//! Client tokens for the bench users: HS256 JSON Web Tokens signed with the server's secret.
//!
//! The load generator speaks only the protocol, so it mints its tokens here instead of borrowing
//! the server's types: the claims are the ones docs/protocol.md (section 2.4) asks of a client
//! token — `sub` (the user id) and `exp` — and nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The server refuses HS256 secrets shorter than this (`auth.jwt_secret`); refusing them here
/// too turns a run of rejected logins into one clear error at start.
const MIN_SECRET_BYTES: usize = 32;

/// How long a bench token is valid: longer than any run.
const TTL_S: u64 = 24 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

pub struct Tokens(EncodingKey);

impl Tokens {
    /// Refuses a secret the server would refuse (shorter than 32 bytes).
    pub fn new(secret: &str) -> anyhow::Result<Tokens> {
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "--secret (ROOMCAST_JWT_SECRET): the HS256 secret is {} bytes long; the server \
                 needs at least {MIN_SECRET_BYTES}",
                secret.len()
            );
        }
        let key = EncodingKey::from_secret(secret.as_bytes())
            .context("--secret (ROOMCAST_JWT_SECRET): not usable as an HS256 key")?;
        Ok(Tokens(key))
    }

    /// A token for `user`, valid for a day.
    pub fn token(&self, user: &str) -> String {
        self.mint(user, now_s() + TTL_S)
            .expect("HS256 signing of two claims cannot fail")
    }

    fn mint(&self, user: &str, exp: u64) -> anyhow::Result<String> {
        let claims = Claims { sub: user, exp };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0)
            .context("signing a bench token")
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use roomcast_core::auth::JwtAuth;

    use super::*;

    const SECRET: &str = "bench-token-secret-bench-token-secret";

    /// The server's own verifier accepts what the bench mints, with the user and expiry it
    /// was minted for.
    #[test]
    fn the_servers_verifier_accepts_a_bench_token() {
        let tokens = Tokens::new(SECRET).unwrap();
        let before = now_s();
        let token = tokens.token("pub-7-3");
        let verifier = JwtAuth::hs256(SECRET.as_bytes()).unwrap();
        let identity = verifier.verify(&token, now_s()).expect("token verifies");
        assert_eq!(identity.user.as_str(), "pub-7-3");
        assert_eq!(identity.name, None);
        assert!(
            (before + TTL_S..=now_s() + TTL_S).contains(&identity.exp),
            "exp {} is a day from now",
            identity.exp
        );
    }

    /// Another secret's verifier refuses it: the signature is checked, not just the shape.
    #[test]
    fn another_secret_refuses_it() {
        let token = Tokens::new(SECRET).unwrap().token("sub-1");
        let other = JwtAuth::hs256(b"another-secret-another-secret-another").unwrap();
        assert!(other.verify(&token, now_s()).is_err());
    }

    #[test]
    fn a_short_secret_is_refused_as_the_server_would() {
        let err = Tokens::new("too-short").err().expect("refused");
        assert!(err.to_string().contains("at least 32"), "{err}");
        assert!(JwtAuth::hs256(b"too-short").is_err());
        assert!(Tokens::new(&"x".repeat(MIN_SECRET_BYTES)).is_ok());
        assert!(JwtAuth::hs256("x".repeat(MIN_SECRET_BYTES).as_bytes()).is_ok());
    }
}
