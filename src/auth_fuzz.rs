//! Property-based fuzzing of the shipped authenticator ([`crate::JwtAuthenticator`]), which
//! every upgrade request's token reaches before any actor exists: arbitrary token text, and
//! tokens correctly signed with the server's key (so the claim checks are reached) whose
//! header and claims hold any JSON values, huge, negative, fractional or of the wrong type.
//!
//! Nothing may panic. For correctly signed tokens the property also computes, from the
//! documented rules alone (`docs/security.md`, section 2.2), whether the token must be
//! accepted, and compares. It runs with the same case counts as `inbound_fuzz`:
//! `PROPTEST_CASES=1000000 cargo test --release --lib auth_fuzz` is the long pass.

use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::auth::Authenticator;
use crate::ids::UserId;
use crate::inbound_fuzz::{config, json_value};
use crate::jwt::{JwtAuthenticator, DEFAULT_LEEWAY_SECS};

const SECRET: &[u8] = b"auth fuzz secret";

/// Seconds within which a claim is too close to "now" for the model to say which side of
/// the boundary the authenticator's own clock reading falls.
const CLOCK_SLACK: i128 = 3;

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A token with this header and these claims, signed with HS256 and the server's key.
fn signed(header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("HS256 signing cannot fail");
    format!("{message}.{signature}")
}

fn now() -> i128 {
    i128::from(jsonwebtoken::get_current_timestamp())
}

/// A NumericDate-ish claim: near now (either side of the leeway), at the edges of every
/// integer type, fractional, or any JSON value at all.
fn time_claim() -> impl Strategy<Value = Value> {
    let now = jsonwebtoken::get_current_timestamp();
    prop_oneof![
        4 => (-100_000i64..100_000).prop_map(move |offset| json!(now as i64 + offset)),
        1 => prop_oneof![
            Just(json!(1u64 << 63)),
            Just(json!((1u64 << 63) - 1)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(-1)),
            Just(json!(0)),
            Just(json!(1e300)),
            Just(json!(-0.0)),
            Just(json!(now as f64 + 3600.5)),
        ],
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => json_value(),
    ]
}

fn sub_claim() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-z0-9@._-]{1,20}".prop_map(Value::from),
        1 => ".{0,300}".prop_map(Value::from),
        1 => Just(Value::from("x".repeat(257))),
        1 => json_value(),
    ]
}

/// Claims for a signed token: each of `sub`, `exp`, `nbf`, `iss`, `aud`, `iat` present or
/// absent, plus arbitrary other claims.
fn claims() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, sub_claim()),
        prop::option::weighted(0.9, time_claim()),
        prop::option::of(time_claim()),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of(time_claim()),
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
    )
        .prop_map(|(sub, exp, nbf, iss, aud, iat, others)| {
            let mut claims: Map<String, Value> = others.into_iter().collect();
            for (name, value) in [
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("iss", iss),
                ("aud", aud),
                ("iat", iat),
            ] {
                match value {
                    Some(value) => claims.insert(name.to_owned(), value),
                    None => claims.remove(name),
                };
            }
            Value::Object(claims)
        })
}

fn header() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!({ "alg": "HS256", "typ": "JWT" })),
        1 => prop_oneof![Just("none"), Just("HS512"), Just("RS256"), Just("hs256"), Just("")]
            .prop_map(|alg| json!({ "alg": alg, "typ": "JWT" })),
        1 => (json_value(), json_value(), json_value())
            .prop_map(|(typ, kid, crit)| json!({ "alg": "HS256", "typ": typ, "kid": kid, "crit": crit })),
        1 => json_value(),
    ]
}

/// Whether the documented rules accept a signed HS256 token with these claims on an
/// authenticator with the default leeway and no issuer or audience; `None` when a time
/// claim is too close to a boundary to tell.
fn documented_verdict(claims: &Value) -> Option<bool> {
    let leeway = i128::from(DEFAULT_LEEWAY_SECS);
    let now = now();
    // `sub`: a string that is a valid user id.
    let sub_ok = claims["sub"]
        .as_str()
        .is_some_and(|sub| UserId::new(sub).is_ok());
    // `exp`: required, an integer number of seconds, not past (with the leeway), and one
    // this system's clock can hold.
    let exp = match &claims["exp"] {
        Value::Number(n) => n.as_u64().map(i128::from),
        _ => None,
    };
    let exp_ok = match exp {
        Some(exp) if (exp - (now - leeway)).abs() <= CLOCK_SLACK => return None,
        Some(exp) => exp >= now - leeway && exp <= i128::from(i64::MAX),
        None => false,
    };
    // `nbf`: absent, or a non-negative number of seconds (a fraction is rounded)
    // not in the future beyond the leeway.
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(Value::Number(n)) => {
            let nbf = match (n.as_u64(), n.as_f64()) {
                (Some(nbf), _) => Some(i128::from(nbf)),
                (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                    Some(f.round() as i128)
                }
                _ => None,
            };
            match nbf {
                Some(nbf) if (nbf - (now + leeway)).abs() <= CLOCK_SLACK => return None,
                Some(nbf) => nbf <= now + leeway,
                None => false,
            }
        }
        _ => false,
    };
    Some(sub_ok && exp_ok && nbf_ok)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_token_text_is_answered_without_panicking(
        token in prop_oneof![
            ".{0,300}",
            "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}",
            "[A-Za-z0-9_=+/.-]{0,200}",
        ],
    ) {
        let strict = JwtAuthenticator::hs256(SECRET)
            .with_issuer("https://issuer.example")
            .with_audience("agentwire");
        let _ = JwtAuthenticator::hs256(SECRET).authenticate(&token);
        let _ = strict.authenticate(&token);
    }

    #[test]
    fn signed_tokens_with_any_header_and_claims_are_accepted_or_refused(
        header in header(),
        claims in claims(),
        leeway in prop_oneof![Just(0u64), Just(DEFAULT_LEEWAY_SECS), any::<u64>()],
    ) {
        let token = signed(&header, &claims);
        let strict = JwtAuthenticator::hs256(SECRET)
            .with_issuer("https://issuer.example")
            .with_audience("agentwire")
            .with_leeway(Duration::from_secs(leeway));
        let _ = strict.authenticate(&token);
        let _ = JwtAuthenticator::hs256(SECRET)
            .with_leeway(Duration::from_secs(leeway))
            .authenticate(&token);
    }

    #[test]
    fn signed_tokens_are_accepted_exactly_as_documented(claims in claims()) {
        let token = signed(&json!({ "alg": "HS256", "typ": "JWT" }), &claims);
        let verdict = JwtAuthenticator::hs256(SECRET).authenticate(&token);
        if let Some(expected) = documented_verdict(&claims) {
            prop_assert_eq!(verdict.is_ok(), expected, "claims {} gave {:?}", claims, verdict);
        }
        if let Ok(identity) = verdict {
            prop_assert_eq!(Some(identity.user_id.as_str()), claims["sub"].as_str());
            let exp = claims["exp"].as_u64().expect("an accepted exp is an integer");
            prop_assert_eq!(
                identity.expires_at,
                UNIX_EPOCH.checked_add(Duration::from_secs(exp))
            );
        }
    }
}

#[test]
fn the_model_sees_both_verdicts() {
    let now = jsonwebtoken::get_current_timestamp();
    let valid = json!({ "sub": "alice", "exp": now + 3600 });
    assert_eq!(documented_verdict(&valid), Some(true));
    let far = json!({ "sub": "alice", "exp": (1u64 << 63) - 1 });
    assert_eq!(documented_verdict(&far), Some(true));
    let beyond = json!({ "sub": "alice", "exp": 1u64 << 63 });
    assert_eq!(documented_verdict(&beyond), Some(false));
    let auth = JwtAuthenticator::hs256(SECRET);
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    assert!(auth.authenticate(&signed(&header, &valid)).is_ok());
    assert!(auth.authenticate(&signed(&header, &far)).is_ok());
    assert!(auth.authenticate(&signed(&header, &beyond)).is_err());
}
