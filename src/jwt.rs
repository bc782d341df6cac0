//! The shipped [`Authenticator`]: HS256 JSON Web Tokens whose `sub` claim is the user id.
//!
//! It checks the signature, `exp` (required) and `nbf` (when present) with a small leeway for
//! clock skew, and optionally `iss` and `aud`. Any claim value, however large, negative or
//! oddly typed, is either accepted or refused with an [`AuthError`] (HTTP 401): the arithmetic
//! on claims is checked. It never mints tokens: issuing them is the application's job (the
//! demo server's login route is the only minting code in this repository, and it is marked
//! as a demo).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::ids::UserId;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The largest leeway [`JwtAuthenticator::with_leeway`] sets: one day.
const MAX_LEEWAY_SECS: u64 = 24 * 60 * 60;

/// Verifies HS256 JWTs signed with a shared secret.
///
/// ```
/// let auth = agentwire::JwtAuthenticator::hs256(b"a long random secret")
///     .with_issuer("https://auth.example.com")
///     .with_audience("agentwire");
/// # let _ = auth;
/// ```
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl JwtAuthenticator {
    /// Accepts tokens signed with `secret` using HS256; `exp` is required.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = DEFAULT_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // An `aud` claim is only checked when an audience is configured.
        validation.validate_aud = false;
        JwtAuthenticator {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Also requires an `iss` claim equal to `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Also requires an `aud` claim that contains `audience`.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Changes the clock-skew leeway on `exp` and `nbf` (at most one day; a longer one is
    /// cut to a day).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs().min(MAX_LEEWAY_SECS);
        self
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError(e.to_string()))?;
        let user_id =
            UserId::new(&data.claims.sub).map_err(|e| AuthError(format!("bad `sub`: {e}")))?;
        let expires_at = unix_time(data.claims.exp).ok_or_else(|| {
            AuthError(format!(
                "`exp` {} is later than this system's clock can represent",
                data.claims.exp
            ))
        })?;
        Ok(Identity {
            user_id,
            expires_at: Some(expires_at),
        })
    }
}

/// The time `secs` seconds after the Unix epoch, if the platform's clock can hold it (on
/// Linux, up to 2^63 - 1 seconds).
fn unix_time(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"unit test secret";

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn sub_and_exp_are_required_and_checked() {
        let auth = JwtAuthenticator::hs256(SECRET);
        let ok = auth
            .authenticate(&sign(json!({ "sub": "alice", "exp": in_an_hour() })))
            .unwrap();
        assert_eq!(ok.user_id.as_str(), "alice");
        assert!(auth.authenticate(&sign(json!({ "sub": "alice" }))).is_err());
        assert!(auth
            .authenticate(&sign(json!({ "exp": in_an_hour() })))
            .is_err());
        let expired = jsonwebtoken::get_current_timestamp() - 60;
        assert!(auth
            .authenticate(&sign(json!({ "sub": "alice", "exp": expired })))
            .is_err());
        let not_yet = json!({ "sub": "a", "exp": in_an_hour(), "nbf": in_an_hour() - 60 });
        assert!(auth.authenticate(&sign(not_yet)).is_err());
        assert!(auth
            .authenticate(&sign(json!({ "sub": "", "exp": in_an_hour() })))
            .is_err());
    }

    #[test]
    fn issuer_and_audience_are_required_once_configured() {
        let plain = JwtAuthenticator::hs256(SECRET);
        let with_aud = sign(json!({ "sub": "a", "exp": in_an_hour(), "aud": "x" }));
        assert!(
            plain.authenticate(&with_aud).is_ok(),
            "aud ignored when not configured"
        );

        let strict = JwtAuthenticator::hs256(SECRET)
            .with_issuer("https://issuer")
            .with_audience("agentwire");
        let bare = sign(json!({ "sub": "a", "exp": in_an_hour() }));
        assert!(
            strict.authenticate(&bare).is_err(),
            "missing iss/aud refused"
        );
        let wrong = sign(
            json!({ "sub": "a", "exp": in_an_hour(), "iss": "https://issuer", "aud": "other" }),
        );
        assert!(strict.authenticate(&wrong).is_err());
        let right = sign(
            json!({ "sub": "a", "exp": in_an_hour(), "iss": "https://issuer", "aud": "agentwire" }),
        );
        assert!(strict.authenticate(&right).is_ok());
    }
}
