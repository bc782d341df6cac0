//! The shipped [`Authenticator`]: HS256 JSON Web Tokens whose `sub` claim is the user id.
//!
//! It checks the signature, `exp` (required) and `nbf` (when present) with a small leeway for
//! clock skew, and optionally `iss` and `aud`. It never mints tokens: issuing them is the
//! application's job (the demo server's login route is the only minting code in this
//! repository, and it is marked as a demo).

use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::ids::UserId;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

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
        JwtAuthenticator {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Also requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Also requires `aud` to contain `audience`.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self
    }

    /// Changes the clock-skew leeway on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError(e.to_string()))?;
        let user_id =
            UserId::new(&data.claims.sub).map_err(|e| AuthError(format!("bad `sub`: {e}")))?;
        Ok(Identity {
            user_id,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(data.claims.exp)),
        })
    }
}
