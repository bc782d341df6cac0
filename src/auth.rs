//! Authentication: the [`Authenticator`] trait the application implements (or the shipped
//! [`crate::JwtAuthenticator`]), and where a token is read from on the upgrade request.
//!
//! Every socket is authenticated before the WebSocket upgrade; a request without a valid
//! token gets HTTP 401 and never reaches an actor. There is no bypass.

use std::time::SystemTime;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::ids::UserId;

/// The subprotocol prefix that carries a token: `Sec-WebSocket-Protocol: jwt.<token>`.
pub const SUBPROTOCOL_PREFIX: &str = "jwt.";

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user every socket opened with this token is bound to.
    pub user_id: UserId,
    /// When the token stops being valid, if it says.
    pub expires_at: Option<SystemTime>,
}

/// Why a token was refused. The client only ever sees HTTP 401; the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "authentication failed: {}", self.0)
    }
}

impl std::error::Error for AuthError {}

/// Verifies a bearer token and says which user it belongs to.
///
/// ```
/// use agentwire::{AuthError, Authenticator, Identity, UserId};
/// /// Accepts tokens from a fixed table (a real app would ask its session store).
/// struct StaticTokens;
/// impl Authenticator for StaticTokens {
///     fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
///         match token {
///             "secret-of-alice" => Ok(Identity { user_id: UserId::new("alice").unwrap(), expires_at: None }),
///             _ => Err(AuthError("unknown token".into())),
///         }
///     }
/// }
/// assert!(StaticTokens.authenticate("nope").is_err());
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token`; an `Err` answers the upgrade with HTTP 401.
    fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;
}

/// A token found on an upgrade request, and the subprotocol to echo if it came in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    /// The raw token.
    pub token: String,
    /// `jwt.<token>` when the token came as a subprotocol; the server must echo it.
    pub subprotocol: Option<String>,
}

/// Reads the token from, in this order: the `Sec-WebSocket-Protocol` header (`jwt.<token>`),
/// `Authorization: Bearer <token>`, or the `token` query parameter.
pub fn extract_token(req: &HttpRequest) -> Option<PresentedToken> {
    from_subprotocol(req)
        .or_else(|| from_authorization(req))
        .or_else(|| from_query(req))
}

fn from_subprotocol(req: &HttpRequest) -> Option<PresentedToken> {
    let offered = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    offered.split(',').map(str::trim).find_map(|protocol| {
        let token = protocol.strip_prefix(SUBPROTOCOL_PREFIX)?;
        (!token.is_empty()).then(|| PresentedToken {
            token: token.to_owned(),
            subprotocol: Some(protocol.to_owned()),
        })
    })
}

fn from_authorization(req: &HttpRequest) -> Option<PresentedToken> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| PresentedToken {
        token: token.to_owned(),
        subprotocol: None,
    })
}

fn from_query(req: &HttpRequest) -> Option<PresentedToken> {
    req.query_string().split('&').find_map(|pair| {
        let token = pair.strip_prefix("token=")?;
        // JWTs are URL-safe base64 joined by dots; anything needing decoding is not one of
        // ours, but percent-decoding keeps other authenticators' tokens usable.
        let token = percent_decode(token)?;
        (!token.is_empty()).then_some(PresentedToken {
            token,
            subprotocol: None,
        })
    })
}

fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn subprotocol_wins_then_header_then_query() {
        let req = TestRequest::default()
            .uri("/ws?token=q")
            .insert_header((header::AUTHORIZATION, "Bearer h"))
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "chat, jwt.s"))
            .to_http_request();
        let found = extract_token(&req).unwrap();
        assert_eq!(found.token, "s");
        assert_eq!(found.subprotocol.as_deref(), Some("jwt.s"));

        let req = TestRequest::default()
            .uri("/ws?token=q")
            .insert_header((header::AUTHORIZATION, "bearer h"))
            .to_http_request();
        assert_eq!(extract_token(&req).unwrap().token, "h");

        let req = TestRequest::default()
            .uri("/ws?a=1&token=q%2Ex")
            .to_http_request();
        assert_eq!(extract_token(&req).unwrap().token, "q.x");

        let req = TestRequest::default()
            .uri("/ws?token=%zz")
            .to_http_request();
        assert_eq!(extract_token(&req), None);
        let req = TestRequest::default().uri("/ws").to_http_request();
        assert_eq!(extract_token(&req), None);
    }
}
