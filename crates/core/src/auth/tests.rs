//! Tests of the token verifier: one per algorithm, the allow-list, claims, key sets and rotation.
//! Keys are fixtures in `crates/core/testdata` (see its README).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

const RSA1_PRIVATE: &[u8] = include_bytes!("../../testdata/rsa1_private.pem");
const RSA1_PUBLIC: &[u8] = include_bytes!("../../testdata/rsa1_public.pem");
const EC1_PRIVATE: &[u8] = include_bytes!("../../testdata/ec1_private.pem");
const EC1_PUBLIC: &[u8] = include_bytes!("../../testdata/ec1_public.pem");
const EC2_PRIVATE: &[u8] = include_bytes!("../../testdata/ec2_private.pem");
const JWKS: &[u8] = include_bytes!("../../testdata/jwks.json");

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

fn claims() -> Value {
    json!({ "sub": "alice", "exp": NOW + 60, "name": "Alice" })
}

/// Signs `claims` with `alg` and the key in `pem` (a private key) or `SECRET` (HS256).
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA1_PRIVATE).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC1_PRIVATE).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    sign_with(alg, &key, kid, claims)
}

fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn ec2_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC2_PRIVATE).unwrap()
}

fn hs() -> JwtAuth {
    JwtAuth::hs256(SECRET).unwrap()
}

fn rs() -> JwtAuth {
    JwtAuth::public_key_pem(TokenAlg::RS256, RSA1_PUBLIC).unwrap()
}

fn es() -> JwtAuth {
    JwtAuth::public_key_pem(TokenAlg::ES256, EC1_PUBLIC).unwrap()
}

/// A token with the given header and claims and an empty or junk signature.
fn unsigned(header: &str, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[test]
fn hs256_issue_then_verify() {
    let a = hs();
    assert!(a.can_sign());
    let t = a.issue(&alice(), Some("Alice"), NOW + 60).unwrap();
    let id = a.verify(&t, NOW).unwrap();
    assert_eq!(id.user, alice());
    assert_eq!(id.name.as_deref(), Some("Alice"));
    assert_eq!(id.exp, NOW + 60);
    let t = a.issue(&alice(), None, NOW + 60).unwrap();
    assert_eq!(a.verify(&t, NOW).unwrap().name, None);
    // Surrounding whitespace (a pasted token) is tolerated.
    assert!(a.verify(&format!(" {t}\n"), NOW).is_ok());
}

#[test]
fn hs256_secret_must_be_32_bytes() {
    assert_eq!(
        JwtAuth::hs256(&SECRET[..31]).err(),
        Some(KeyError::SecretTooShort { len: 31 })
    );
    assert_eq!(
        JwtAuth::hs256(b"").err(),
        Some(KeyError::SecretTooShort { len: 0 })
    );
    let e = JwtAuth::hs256(b"short").err().unwrap().to_string();
    assert!(e.contains("at least 32 bytes"), "{e}");
    assert!(JwtAuth::hs256(&[7u8; 32]).is_ok());
}

#[test]
fn rs256_public_key_verifies_private_key_signatures() {
    let a = rs();
    assert!(!a.can_sign());
    assert_eq!(a.describe(), "RS256 public key");
    let id = a
        .verify(&sign(Algorithm::RS256, None, &claims()), NOW)
        .unwrap();
    assert_eq!((id.user, id.name.as_deref()), (alice(), Some("Alice")));
    // Tampered claims fail the signature check.
    let t = sign(Algorithm::RS256, None, &claims());
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(json!({ "sub": "mallory", "exp": NOW + 60 }).to_string());
    parts[1] = &forged;
    assert_eq!(
        a.verify(&parts.join("."), NOW),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn es256_public_key_verifies_private_key_signatures() {
    let a = es();
    assert_eq!(a.describe(), "ES256 public key");
    let id = a
        .verify(&sign(Algorithm::ES256, None, &claims()), NOW)
        .unwrap();
    assert_eq!(id.user, alice());
    // Same algorithm, another key pair: the signature does not match.
    let other = sign_with(Algorithm::ES256, &ec2_key(), None, &claims());
    assert_eq!(a.verify(&other, NOW), Err(AuthError::BadSignature));
}

#[test]
fn issuing_needs_a_secret() {
    let e = rs().issue(&alice(), None, NOW + 60).unwrap_err();
    assert!(matches!(e, IssueError::NoSigningKey(_)));
    assert!(e.to_string().contains("RS256 public key"), "{e}");
    let e = JwtAuth::jwks(JWKS)
        .unwrap()
        .issue(&alice(), None, NOW)
        .unwrap_err();
    assert!(e.to_string().contains("no key to sign with"), "{e}");
}

#[test]
fn only_the_configured_algorithm_is_accepted() {
    let hs_token = sign(Algorithm::HS256, None, &claims());
    let rs_token = sign(Algorithm::RS256, None, &claims());
    let es_token = sign(Algorithm::ES256, None, &claims());
    let unsupported = |alg: &str| Err(AuthError::UnsupportedAlg(alg.into()));
    assert_eq!(hs().verify(&rs_token, NOW), unsupported("RS256"));
    assert_eq!(hs().verify(&es_token, NOW), unsupported("ES256"));
    assert_eq!(rs().verify(&hs_token, NOW), unsupported("HS256"));
    assert_eq!(rs().verify(&es_token, NOW), unsupported("ES256"));
    assert_eq!(es().verify(&rs_token, NOW), unsupported("RS256"));
    assert_eq!(es().verify(&hs_token, NOW), unsupported("HS256"));

    // The classic confusion: HS256 "signed" with the RSA public key's PEM as the secret.
    let confused = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA1_PUBLIC).unwrap(),
        None,
        &claims(),
    );
    assert_eq!(rs().verify(&confused, NOW), unsupported("HS256"));

    // An algorithm jsonwebtoken knows but roomcast does not accept.
    let hs384 = sign_with(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET).unwrap(),
        None,
        &claims(),
    );
    assert_eq!(hs().verify(&hs384, NOW), unsupported("HS384"));
}

#[test]
fn alg_none_is_refused() {
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","typ":"JWT"}"#] {
        let t = unsigned(header, &claims(), "");
        assert_eq!(
            hs().verify(&t, NOW),
            Err(AuthError::UnsupportedAlg("none".into()))
        );
        assert_eq!(
            es().verify(&t, NOW),
            Err(AuthError::UnsupportedAlg("none".into()))
        );
        let jwks = JwtAuth::jwks(JWKS).unwrap();
        assert_eq!(
            jwks.verify(&t, NOW),
            Err(AuthError::UnsupportedAlg("none".into()))
        );
    }
    let t = unsigned(r#"{"alg":"NONE"}"#, &claims(), "x");
    assert_eq!(
        hs().verify(&t, NOW),
        Err(AuthError::UnsupportedAlg("NONE".into()))
    );
}

#[test]
fn garbage_is_malformed() {
    let a = hs();
    for bad in ["", "a.b", "a.b.c.d", "!!!.b.c", "e30.e30.e30", "...", "x"] {
        assert!(a.verify(bad, NOW).is_err(), "{bad}");
    }
    assert_eq!(
        a.verify("a.b", NOW),
        Err(AuthError::Malformed("expected three dot-separated parts"))
    );
    assert_eq!(
        a.verify("!!!.b.c", NOW),
        Err(AuthError::Malformed("header is not base64url"))
    );
    assert_eq!(
        a.verify("e30.e30.e30", NOW),
        Err(AuthError::Malformed("header has no alg"))
    );
    let not_json = format!("{}.e30.e30", URL_SAFE_NO_PAD.encode("nope"));
    assert_eq!(
        a.verify(&not_json, NOW),
        Err(AuthError::Malformed("header is not JSON"))
    );
    let bad_kid = unsigned(r#"{"alg":"HS256","kid":5}"#, &claims(), "x");
    assert_eq!(
        a.verify(&bad_kid, NOW),
        Err(AuthError::Malformed("header is not a valid JWT header"))
    );
    // A good header over claims that are not an object.
    let t = sign(Algorithm::HS256, None, &json!([1, 2]));
    assert_eq!(
        a.verify(&t, NOW),
        Err(AuthError::Malformed("claims are not a JSON object"))
    );
}

#[test]
fn expiry_and_not_before_with_leeway() {
    for a in [hs(), rs(), es()] {
        let alg = match a.describe().as_str() {
            "HS256 secret" => Algorithm::HS256,
            "RS256 public key" => Algorithm::RS256,
            _ => Algorithm::ES256,
        };
        let at = |c: Value| sign(alg, None, &c);
        assert_eq!(
            a.verify(&at(json!({ "sub": "a", "exp": NOW - 60 })), NOW),
            Err(AuthError::Expired)
        );
        assert_eq!(
            a.verify(&at(json!({ "sub": "a", "exp": NOW - LEEWAY_S })), NOW),
            Err(AuthError::Expired)
        );
        assert!(
            a.verify(&at(json!({ "sub": "a", "exp": NOW - LEEWAY_S + 1 })), NOW)
                .is_ok()
        );
        assert_eq!(
            a.verify(
                &at(json!({ "sub": "a", "exp": NOW + 600, "nbf": NOW + LEEWAY_S + 1 })),
                NOW
            ),
            Err(AuthError::NotYetValid)
        );
        assert!(
            a.verify(
                &at(json!({ "sub": "a", "exp": NOW + 600, "nbf": NOW + LEEWAY_S })),
                NOW
            )
            .is_ok()
        );
    }
}

#[test]
fn requires_sub_and_exp_and_checks_name() {
    let a = hs();
    let v = |c: Value| a.verify(&sign(Algorithm::HS256, None, &c), NOW);
    assert_eq!(v(json!({ "sub": "a" })), Err(AuthError::BadClaim("exp")));
    assert_eq!(
        v(json!({ "sub": "a", "exp": "tomorrow" })),
        Err(AuthError::BadClaim("exp"))
    );
    assert_eq!(
        v(json!({ "exp": 9999999999u64 })),
        Err(AuthError::BadClaim("sub"))
    );
    assert_eq!(
        v(json!({ "sub": 42, "exp": 9999999999u64 })),
        Err(AuthError::BadClaim("sub"))
    );
    assert!(matches!(
        v(json!({ "sub": "", "exp": 9999999999u64 })),
        Err(AuthError::BadSubject(_))
    ));
    assert!(matches!(
        v(json!({ "sub": "ali\u{202E}ce", "exp": 9999999999u64 })),
        Err(AuthError::BadSubject(IdError::BadChar {
            found: '\u{202E}',
            ..
        }))
    ));
    assert!(matches!(
        v(json!({ "sub": "ad\u{200B}min", "exp": 9999999999u64 })),
        Err(AuthError::BadSubject(IdError::BadChar {
            found: '\u{200B}',
            ..
        }))
    ));
    assert_eq!(
        v(json!({ "sub": "a", "exp": 9999999999u64, "nbf": "soon" })),
        Err(AuthError::BadClaim("nbf"))
    );
    for bad in [
        "x\u{7}",
        "evil\u{202E}gnp",
        "a\u{2066}b",
        "ad\u{200D}min",
        "\u{FEFF}x",
    ] {
        let r = v(json!({ "sub": "a", "exp": 9999999999u64, "name": bad }));
        assert!(matches!(r, Err(AuthError::BadName(_))), "{bad:?}: {r:?}");
    }
    let r = v(json!({ "sub": "a", "exp": 9999999999u64, "name": "x".repeat(33) }));
    assert!(matches!(r, Err(AuthError::BadName(_))), "{r:?}");
    assert_eq!(
        v(json!({ "sub": "a", "exp": 9999999999u64, "name": 7 })),
        Err(AuthError::BadClaim("name"))
    );
    // Trimmed; blank means none; fractional times are accepted.
    let id = v(json!({ "sub": "a", "exp": 9999999999.5, "name": "  Bo  " })).unwrap();
    assert_eq!((id.name.as_deref(), id.exp), (Some("Bo"), 9999999999));
    let id = v(json!({ "sub": "a", "exp": 9999999999u64, "name": "  " })).unwrap();
    assert_eq!(id.name, None);
}

#[test]
fn audience_and_issuer_when_configured() {
    let a = es()
        .with_audience(Some("roomcast".into()))
        .with_issuer(Some("https://auth.example".into()));
    let with = |extra: Value| {
        let mut c = claims();
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a.verify(&sign(Algorithm::ES256, None, &c), NOW)
    };
    let iss = "https://auth.example";
    assert!(with(json!({ "aud": "roomcast", "iss": iss })).is_ok());
    assert!(with(json!({ "aud": ["other", "roomcast"], "iss": iss })).is_ok());
    assert_eq!(
        with(json!({ "aud": "other", "iss": iss })),
        Err(AuthError::BadAudience)
    );
    assert_eq!(with(json!({ "iss": iss })), Err(AuthError::BadAudience));
    assert_eq!(
        with(json!({ "aud": 5, "iss": iss })),
        Err(AuthError::BadAudience)
    );
    assert_eq!(
        with(json!({ "aud": "roomcast", "iss": "https://evil.example" })),
        Err(AuthError::BadIssuer)
    );
    assert_eq!(
        with(json!({ "aud": "roomcast" })),
        Err(AuthError::BadIssuer)
    );

    // Not configured: aud and iss are not looked at.
    let t = sign(
        Algorithm::ES256,
        None,
        &json!({ "sub": "a", "exp": NOW + 60, "aud": "anyone", "iss": "anybody" }),
    );
    assert!(es().verify(&t, NOW).is_ok());
}

#[test]
fn key_files_that_do_not_fit_are_refused() {
    // An EC key where RS256 is configured, and the other way round.
    assert!(matches!(
        JwtAuth::public_key_pem(TokenAlg::RS256, EC1_PUBLIC),
        Err(KeyError::Pem {
            alg: TokenAlg::RS256,
            ..
        })
    ));
    assert!(matches!(
        JwtAuth::public_key_pem(TokenAlg::ES256, RSA1_PUBLIC),
        Err(KeyError::Pem {
            alg: TokenAlg::ES256,
            ..
        })
    ));
    assert!(matches!(
        JwtAuth::public_key_pem(TokenAlg::ES256, b"not a pem"),
        Err(KeyError::Pem { .. })
    ));
    assert_eq!(
        JwtAuth::public_key_pem(TokenAlg::HS256, RSA1_PUBLIC).err(),
        Some(KeyError::NotPublicKeyAlg {
            alg: TokenAlg::HS256
        })
    );
}

#[test]
fn jwks_picks_the_key_by_kid_and_each_key_keeps_its_algorithm() {
    let a = JwtAuth::jwks(JWKS).unwrap();
    assert_eq!(a.describe(), "JWKS (3 keys: ES256, RS256)");
    assert!(
        a.verify(&sign(Algorithm::RS256, Some("rsa-1"), &claims()), NOW)
            .is_ok()
    );
    assert!(
        a.verify(&sign(Algorithm::ES256, Some("ec-1"), &claims()), NOW)
            .is_ok()
    );
    let ec2 = sign_with(Algorithm::ES256, &ec2_key(), Some("ec-2"), &claims());
    assert!(a.verify(&ec2, NOW).is_ok());

    // The right key but another kid: the signature does not match that kid's key.
    let mislabelled = sign_with(Algorithm::ES256, &ec2_key(), Some("ec-1"), &claims());
    assert_eq!(a.verify(&mislabelled, NOW), Err(AuthError::BadSignature));
    // A kid's key used with another algorithm.
    assert_eq!(
        a.verify(&sign(Algorithm::ES256, Some("rsa-1"), &claims()), NOW),
        Err(AuthError::UnsupportedAlg("ES256".into()))
    );
    assert_eq!(
        a.verify(&sign(Algorithm::HS256, Some("rsa-1"), &claims()), NOW),
        Err(AuthError::UnsupportedAlg("HS256".into()))
    );
    assert_eq!(
        a.verify(&sign(Algorithm::ES256, Some("ec-9"), &claims()), NOW),
        Err(AuthError::UnknownKeyId("ec-9".into()))
    );
    assert_eq!(
        a.verify(&sign(Algorithm::ES256, None, &claims()), NOW),
        Err(AuthError::MissingKeyId)
    );
}

/// A key set holding only the fixture keys with these kids.
fn jwks_with(kids: &[&str]) -> Vec<u8> {
    let mut set: Value = serde_json::from_slice(JWKS).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| kids.contains(&k["kid"].as_str().unwrap()));
    set.to_string().into_bytes()
}

#[test]
fn jwks_rotation_with_two_keys() {
    let old = sign(Algorithm::ES256, Some("ec-1"), &claims());
    let new = sign_with(Algorithm::ES256, &ec2_key(), Some("ec-2"), &claims());
    // 1. Only the old key is published.
    let before = JwtAuth::jwks(&jwks_with(&["ec-1"])).unwrap();
    assert!(before.verify(&old, NOW).is_ok());
    assert_eq!(
        before.verify(&new, NOW),
        Err(AuthError::UnknownKeyId("ec-2".into()))
    );
    // 2. Both: tokens of either key are accepted while the issuer switches.
    let during = JwtAuth::jwks(&jwks_with(&["ec-1", "ec-2"])).unwrap();
    assert!(during.verify(&old, NOW).is_ok());
    assert!(during.verify(&new, NOW).is_ok());
    // 3. The old key is retired: its tokens are refused.
    let after = JwtAuth::jwks(&jwks_with(&["ec-2"])).unwrap();
    assert_eq!(
        after.verify(&old, NOW),
        Err(AuthError::UnknownKeyId("ec-1".into()))
    );
    assert!(after.verify(&new, NOW).is_ok());
}

#[test]
fn jwks_with_an_hs256_key() {
    let k = URL_SAFE_NO_PAD.encode(SECRET);
    let set = json!({ "keys": [{ "kty": "oct", "kid": "h1", "alg": "HS256", "k": k }] });
    let a = JwtAuth::jwks(set.to_string().as_bytes()).unwrap();
    assert!(
        a.verify(&sign(Algorithm::HS256, Some("h1"), &claims()), NOW)
            .is_ok()
    );
    let short = json!({ "keys": [{ "kty": "oct", "kid": "h1", "k": "c2hvcnQ" }] });
    let e = JwtAuth::jwks(short.to_string().as_bytes()).err().unwrap();
    assert!(e.to_string().contains("at least 32 bytes"), "{e}");
}

#[test]
fn bad_key_sets_are_refused_with_the_key_named() {
    let err = |set: Value| {
        JwtAuth::jwks(set.to_string().as_bytes())
            .err()
            .unwrap()
            .to_string()
    };
    let ec1 = || {
        let set: Value = serde_json::from_slice(JWKS).unwrap();
        set["keys"][1].clone()
    };
    assert!(
        JwtAuth::jwks(b"{")
            .err()
            .unwrap()
            .to_string()
            .contains("not JSON")
    );
    assert!(err(json!({ "keys": [] })).contains("empty"));
    assert!(err(json!([ec1()])).contains("\"keys\" array"));
    let mut k = ec1();
    k.as_object_mut().unwrap().remove("kid");
    assert!(err(json!({ "keys": [k] })).contains("#0: has no kid"));
    assert!(
        err(json!({ "keys": [ec1(), ec1()] })).contains("\"ec-1\": the kid appears more than once")
    );
    let mut k = ec1();
    k["alg"] = "ES384".into();
    let e = err(json!({ "keys": [k] }));
    assert!(e.contains("\"ec-1\"") && e.contains("ES384"), "{e}");
    let mut k = ec1();
    k["crv"] = "P-384".into();
    assert!(err(json!({ "keys": [k] })).contains("P-384"));
    let mut k = ec1();
    k["use"] = "enc".into();
    assert!(err(json!({ "keys": [k] })).contains("\"enc\""));
    let mut k = ec1();
    k["x"] = URL_SAFE_NO_PAD.encode([1u8; 32]).into();
    let e = err(json!({ "keys": [k] }));
    assert!(e.contains("\"ec-1\""), "a point off the curve: {e}");
    let okp = json!({ "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA" });
    assert!(err(json!({ "keys": [okp] })).contains("\"OKP\""));
}
