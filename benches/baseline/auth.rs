//! Authentication at the upgrade: the token from `Sec-WebSocket-Protocol: jwt.<token>`,
//! `Authorization: Bearer <token>` or `?token=<token>` (the first one present), checked as an
//! HS256 JWT with `sub` and `exp`. A missing or invalid token gets `401` before the upgrade.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};

/// Checks HS256 tokens signed with one shared secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Verifier {
    /// Same rules as agentwire's `JwtAuthenticator::hs256`: HS256 only, `sub` and `exp`
    /// required, `nbf` checked when present, 5 s leeway, `aud` ignored.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The user id (`sub`) of a valid token.
    fn user(&self, token: &str) -> Option<String> {
        let sub = decode::<Claims>(token, &self.key, &self.validation)
            .ok()?
            .claims
            .sub;
        let valid = !sub.is_empty() && sub.len() <= 256 && !sub.chars().any(char::is_control);
        valid.then_some(sub)
    }

    /// The `accept_hdr_async` callback: stores the user in `user` and echoes a `jwt.`
    /// subprotocol, or refuses the upgrade with 401.
    // The signature is tungstenite's callback type, error response and all.
    #[allow(clippy::result_large_err)]
    pub fn handshake(
        &self,
        request: &Request,
        mut response: Response,
        user: &mut Option<String>,
    ) -> Result<Response, ErrorResponse> {
        let (token, subprotocol) = find_token(request).ok_or_else(unauthorized)?;
        *user = Some(self.user(&token).ok_or_else(unauthorized)?);
        if let Some(protocol) = subprotocol {
            let value = HeaderValue::from_str(&protocol).map_err(|_| unauthorized())?;
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        Ok(response)
    }
}

fn unauthorized() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("unauthorized".to_owned()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The token and, when it came as a subprotocol, the `jwt.<token>` entry to echo.
fn find_token(request: &Request) -> Option<(String, Option<String>)> {
    let headers = request.headers();
    let from_subprotocol = || {
        let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
        offered.split(',').map(str::trim).find_map(|protocol| {
            let token = protocol.strip_prefix("jwt.")?;
            (!token.is_empty()).then(|| (token.to_owned(), Some(protocol.to_owned())))
        })
    };
    let from_authorization = || {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| (token.to_owned(), None))
    };
    let from_query = || {
        request.uri().query()?.split('&').find_map(|pair| {
            let token = percent_decode(pair.strip_prefix("token=")?)?;
            (!token.is_empty()).then_some((token, None))
        })
    };
    from_subprotocol()
        .or_else(from_authorization)
        .or_else(from_query)
}

fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(input.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
