//! Mounting agentwire in an actix-web app: the `/ws` endpoint and its authentication gate.
//!
//! [`routes`] registers the WebSocket endpoint and the [`Runtime`] as `web::Data`, so the
//! app's own handlers can take `web::Data<Runtime>` and emit. The endpoint reads the token
//! (see [`crate::auth::extract_token`]), answers 401 without detail when it is missing or
//! invalid, and only then upgrades.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::extract_token;
use crate::runtime::Runtime;
use crate::session;

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
        identity.user_id,
        presented.subprotocol.as_deref(),
    )
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .body("unauthorized")
}
