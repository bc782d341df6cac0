//! Mounting agentwire in an actix-web app: the `/ws` endpoint and its authentication gate.
//!
//! [`routes`] registers the WebSocket endpoint and the [`Runtime`] as `web::Data`, so the
//! app's own handlers can take `web::Data<Runtime>` and emit. The endpoint reads the token
//! (see [`crate::auth::extract_token`]), answers 401 without detail when it is missing or
//! invalid, 403 for an origin the policy refuses, 503 while the runtime drains, 400 for a
//! malformed `?epoch=&last_seq=`, and only then upgrades.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use std::sync::atomic::Ordering;

use crate::auth::extract_token;
use crate::config::OriginPolicy;
use crate::inbound::MAX_ID_BYTES;
use crate::runtime::Runtime;
use crate::session::{self, SessionStart};

/// Mounts the WebSocket endpoint (`config.ws_path`, default `/ws`) and shares the runtime as
/// `web::Data<Runtime>`.
///
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use agentwire::{JwtAuthenticator, Runtime};
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let runtime = Runtime::builder(JwtAuthenticator::hs256(b"change me"))
///         .start()
///         .expect("valid config");
///     HttpServer::new(move || App::new().configure(agentwire::routes(runtime.clone())))
///         .bind(("127.0.0.1", 8080))?
///         .run()
///         .await
/// }
/// ```
pub fn routes(runtime: Runtime) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let path = runtime.config().ws_path.clone();
        cfg.app_data(web::Data::new(runtime))
            .route(&path, web::get().to(ws_endpoint));
    }
}

async fn ws_endpoint(
    req: HttpRequest,
    payload: web::Payload,
    runtime: web::Data<Runtime>,
) -> Result<HttpResponse, actix_web::Error> {
    let shared = runtime.shared();
    if shared.draining.load(Ordering::Relaxed) {
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .body("draining"));
    }
    if !origin_allowed(&req, &shared.config.origins) {
        log::info!(
            "ws: upgrade from origin {:?} refused",
            req.headers().get(header::ORIGIN)
        );
        return Ok(HttpResponse::Forbidden().body("origin not allowed"));
    }
    let resume = match resume_at_connect(&req) {
        Ok(resume) => resume,
        Err(problem) => return Ok(HttpResponse::BadRequest().body(problem)),
    };
    let Some(presented) = extract_token(&req) else {
        log::debug!("ws: upgrade without a token refused");
        return Ok(unauthorized());
    };
    let identity = match shared.authenticator.authenticate(&presented.token) {
        Ok(identity) => identity,
        Err(error) => {
            log::info!("ws: upgrade refused: {error}");
            return Ok(unauthorized());
        }
    };
    session::upgrade(
        &req,
        payload,
        shared.clone(),
        SessionStart {
            user_id: identity.user_id,
            token_expires_at: identity.expires_at,
            subprotocol: presented.subprotocol,
            resume_at_connect: resume,
        },
    )
}

/// Applies the origin policy. Requests without `Origin` (non-browser clients) pass.
fn origin_allowed(req: &HttpRequest, policy: &OriginPolicy) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    match policy {
        OriginPolicy::Any => true,
        OriginPolicy::AllowList(allowed) => allowed.iter().any(|a| a == origin),
        OriginPolicy::SameHost => {
            let Some((scheme, origin_authority)) = origin.split_once("://") else {
                return false;
            };
            let Some(host) = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
            else {
                return false;
            };
            same_authority(scheme, origin_authority, host)
        }
    }
}

/// Whether an origin's `host[:port]` names the same host and port as the `Host` header,
/// with the scheme's default port filled in where either leaves it out.
fn same_authority(scheme: &str, origin: &str, host: &str) -> bool {
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        _ => "80",
    };
    let split = |authority: &str| -> (String, String) {
        // `[::1]:8080` keeps its brackets; the port is what follows the last `:` after them.
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        match authority[host_end..].rfind(':') {
            Some(i) => {
                let at = host_end + i;
                (
                    authority[..at].to_ascii_lowercase(),
                    authority[at + 1..].to_owned(),
                )
            }
            None => (authority.to_ascii_lowercase(), default_port.to_owned()),
        }
    };
    split(origin) == split(host)
}

/// `?epoch=E&last_seq=N` on the upgrade request: resume as part of connecting. Both or
/// neither must be present.
fn resume_at_connect(req: &HttpRequest) -> Result<Option<(String, u64)>, &'static str> {
    let mut epoch = None;
    let mut last_seq = None;
    for pair in req.query_string().split('&') {
        if let Some(value) = pair.strip_prefix("epoch=") {
            epoch = Some(value);
        } else if let Some(value) = pair.strip_prefix("last_seq=") {
            last_seq = Some(value);
        }
    }
    match (epoch, last_seq) {
        (None, None) => Ok(None),
        (Some(epoch), Some(last_seq)) => {
            let valid_epoch = !epoch.is_empty()
                && epoch.len() <= MAX_ID_BYTES
                && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
            match (valid_epoch, last_seq.parse::<u64>()) {
                (true, Ok(last_seq)) => Ok(Some((epoch.to_owned(), last_seq))),
                _ => Err("epoch must be alphanumeric and last_seq a non-negative integer"),
            }
        }
        _ => Err("epoch and last_seq go together"),
    }
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .body("unauthorized")
}

#[cfg(test)]
mod tests {
    use super::same_authority;

    #[test]
    fn default_ports_and_case_do_not_matter() {
        assert!(same_authority("https", "App.Example", "app.example:443"));
        assert!(same_authority("http", "app.example:80", "app.example"));
        assert!(same_authority("http", "127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_authority("http", "[::1]:8080", "[::1]:8080"));
        assert!(!same_authority("https", "app.example", "app.example:80"));
        assert!(!same_authority("http", "evil.example", "app.example"));
        assert!(!same_authority("http", "127.0.0.1:8081", "127.0.0.1:8080"));
    }
}
