//! The token verifier from `[auth]`: an HS256 secret (configured, or the one generated in
//! `<data_dir>`), an RS256/ES256 public key file, or a JSON Web Key Set file, plus the optional
//! `aud`/`iss` checks. Used by the server and by `roomcast token`, so both resolve keys the same
//! way. Files are read once, at start-up; errors name the config key or file at fault.

use anyhow::Context;
use roomcast_core::auth::{JwtAuth, TokenAlg};

use crate::config::AuthConfig;
use crate::secret;

/// Builds the verifier `auth` describes (config already validated by [`crate::config::Config`]).
pub fn token_auth(auth: &AuthConfig, data_dir: &std::path::Path) -> anyhow::Result<JwtAuth> {
    let verifier = if let Some(path) = &auth.jwks_file {
        let json = std::fs::read(path)
            .with_context(|| format!("auth.jwks_file: cannot read {}", path.display()))?;
        JwtAuth::jwks(&json).with_context(|| format!("auth.jwks_file {}", path.display()))?
    } else if let Some(path) = &auth.public_key_file {
        let alg = auth.algorithm.unwrap_or(TokenAlg::HS256);
        let pem = std::fs::read(path)
            .with_context(|| format!("auth.public_key_file: cannot read {}", path.display()))?;
        JwtAuth::public_key_pem(alg, &pem)
            .with_context(|| format!("auth.public_key_file {}", path.display()))?
    } else {
        match auth.jwt_secret.as_deref() {
            Some(s) if !s.is_empty() => {
                JwtAuth::hs256(s.as_bytes()).context("auth.jwt_secret is too short")?
            }
            _ => {
                let secret = secret::load_or_create(data_dir)?;
                let path = data_dir.join(secret::FILE_NAME);
                JwtAuth::hs256(&secret).with_context(|| {
                    format!(
                        "{}: write a longer secret into it, or delete it to have one generated",
                        path.display()
                    )
                })?
            }
        }
    };
    Ok(verifier
        .with_audience(auth.audience.clone())
        .with_issuer(auth.issuer.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/testdata");

    fn msg(r: anyhow::Result<JwtAuth>) -> String {
        format!("{:#}", r.err().expect("refused"))
    }

    #[test]
    fn each_key_source() {
        let dir = tempfile::tempdir().unwrap();
        let generated = token_auth(&AuthConfig::default(), dir.path()).unwrap();
        assert!(generated.can_sign());
        let pem = AuthConfig {
            algorithm: Some(TokenAlg::ES256),
            public_key_file: Some(format!("{TESTDATA}/ec1_public.pem").into()),
            ..AuthConfig::default()
        };
        let a = token_auth(&pem, dir.path()).unwrap();
        assert_eq!(a.describe(), "ES256 public key");
        let jwks = AuthConfig {
            jwks_file: Some(format!("{TESTDATA}/jwks.json").into()),
            ..AuthConfig::default()
        };
        assert!(
            token_auth(&jwks, dir.path())
                .unwrap()
                .describe()
                .starts_with("JWKS (3 keys")
        );
    }

    #[test]
    fn unreadable_or_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AuthConfig {
            algorithm: Some(TokenAlg::RS256),
            public_key_file: Some(dir.path().join("nope.pem")),
            ..AuthConfig::default()
        };
        let e = msg(token_auth(&missing, dir.path()));
        assert!(
            e.contains("auth.public_key_file: cannot read") && e.contains("nope.pem"),
            "{e}"
        );
        let wrong = AuthConfig {
            algorithm: Some(TokenAlg::RS256),
            public_key_file: Some(format!("{TESTDATA}/ec1_public.pem").into()),
            ..AuthConfig::default()
        };
        let e = msg(token_auth(&wrong, dir.path()));
        assert!(
            e.contains("ec1_public.pem") && e.contains("RS256 public key"),
            "{e}"
        );
        std::fs::write(dir.path().join("bad.json"), "{\"keys\": 1}").unwrap();
        let bad = AuthConfig {
            jwks_file: Some(dir.path().join("bad.json")),
            ..AuthConfig::default()
        };
        let e = msg(token_auth(&bad, dir.path()));
        assert!(
            e.contains("auth.jwks_file") && e.contains("\"keys\" array"),
            "{e}"
        );
    }

    #[test]
    fn a_short_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(secret::FILE_NAME), "short\n").unwrap();
        let e = msg(token_auth(&AuthConfig::default(), dir.path()));
        assert!(e.contains("jwt_secret: write a longer secret"), "{e}");
        assert!(e.contains("at least 32 bytes"), "{e}");
    }
}
