//! DEMO ONLY: `POST /demo/login {"user": NAME}` → `{"token": JWT}`.
//!
//! This route issues a valid token for any name anyone types. It exists so a person can try
//! the demo server in a browser, and it is the only code in this repository that mints
//! tokens. It lives in the binary, never in the library: an application issues tokens from
//! its own login and only hands agentwire an `Authenticator`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// How long a demo token is valid.
pub const DEMO_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The signing key, shared with the server's `JwtAuthenticator`.
#[derive(Clone)]
pub struct DemoIssuer {
    key: EncodingKey,
}

impl DemoIssuer {
    pub fn new(secret: &[u8]) -> Self {
        DemoIssuer {
            key: EncodingKey::from_secret(secret),
        }
    }

    fn mint(&self, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let exp = (SystemTime::now() + DEMO_TOKEN_LIFETIME)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        encode(&Header::default(), &Claims { sub: user, exp }, &self.key)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

#[derive(Deserialize)]
struct LoginRequest {
    user: String,
}

/// Mounts `POST /demo/login`.
pub fn routes(issuer: DemoIssuer) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(issuer))
            .app_data(web::JsonConfig::default().limit(4096))
            .route("/demo/login", web::post().to(login));
    }
}

async fn login(issuer: web::Data<DemoIssuer>, body: web::Json<LoginRequest>) -> HttpResponse {
    let user = body.user.trim();
    if let Err(error) = agentwire::UserId::new(user) {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": error.to_string() }));
    }
    match issuer.mint(user) {
        Ok(token) => HttpResponse::Ok().json(serde_json::json!({ "token": token })),
        Err(error) => {
            log::error!("demo login: could not sign a token: {error}");
            HttpResponse::InternalServerError().finish()
        }
    }
}
