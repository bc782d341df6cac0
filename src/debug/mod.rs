//! Operator routes: the live supervision tree, the supervision log, fault injection and the
//! Prometheus metrics, all behind an admin token.
//!
//! Off unless the application mounts [`debug_routes`]; `agentwire serve` mounts them. Every
//! data route needs `Authorization: Bearer <admin token>` (compared in constant time);
//! anything else gets 401. The page at `/debug` holds no data and is served to anyone: it
//! asks for the token and sends it with each request it makes.
//!
//! - `GET /debug`: a page showing the tree live, sortable and filterable.
//! - `GET /debug/tree?format=json|dot|text`: the tree (see [`TreeNode`]).
//! - `GET /debug/events`: the supervision log as JSON.
//! - `POST /debug/fault` (`Content-Type: application/json`):
//!   `{"action": "crash_user", "user": ID}` or
//!   `{"action": "stall_session", "session": N, "ms": MS}`.
//! - `GET /metrics`: Prometheus text format.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::ids::{SessionId, UserId};
use crate::registry::Fault;
use crate::runtime::Runtime;

mod tree;

pub use tree::{Totals, TreeNode};

const PAGE_HTML: &str = include_str!("page.html");

/// The longest stall a fault request may ask for.
const MAX_STALL: Duration = Duration::from_secs(600);

/// The admin token guarding the debug routes.
#[derive(Clone)]
struct AdminToken(String);

/// Mounts the operator routes behind `Authorization: Bearer <admin_token>`. An empty token
/// refuses every request.
///
/// ```no_run
/// # use actix_web::App;
/// # fn app(runtime: agentwire::Runtime) {
/// App::new()
///     .configure(agentwire::routes(runtime.clone()))
///     .configure(agentwire::debug_routes(runtime, "a long random admin token"));
/// # }
/// ```
pub fn debug_routes(
    runtime: Runtime,
    admin_token: impl Into<String>,
) -> impl FnOnce(&mut web::ServiceConfig) {
    let token = AdminToken(admin_token.into());
    move |cfg| {
        let runtime = web::Data::new(runtime);
        let token = web::Data::new(token);
        cfg.service(
            web::scope("/debug")
                .app_data(runtime.clone())
                .app_data(token.clone())
                .route("", web::get().to(page))
                .route("/tree", web::get().to(tree))
                .route("/events", web::get().to(events))
                .route("/fault", web::post().to(fault)),
        )
        .service(
            web::resource("/metrics")
                .app_data(runtime)
                .app_data(token)
                .route(web::get().to(metrics)),
        );
    }
}

fn authorized(req: &HttpRequest, token: &AdminToken) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !token.0.is_empty() && constant_time_eq(presented.as_bytes(), token.0.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .body("unauthorized")
}

macro_rules! require_admin {
    ($req:expr, $token:expr) => {
        if !authorized(&$req, &$token) {
            return unauthorized();
        }
    };
}

async fn page(req: HttpRequest, token: web::Data<AdminToken>) -> HttpResponse {
    // The page itself holds no data; it asks for the token and fetches the JSON with it.
    let _ = (req, token);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE_HTML)
}

#[derive(Deserialize)]
struct TreeQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn tree(
    req: HttpRequest,
    query: web::Query<TreeQuery>,
    runtime: web::Data<Runtime>,
    token: web::Data<AdminToken>,
) -> HttpResponse {
    require_admin!(req, token);
    let snapshot = match runtime.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(gone) => return HttpResponse::ServiceUnavailable().body(gone.to_string()),
    };
    let tree = TreeNode::from(&snapshot);
    match query.format.as_deref().unwrap_or("json") {
        "json" => HttpResponse::Ok().json(tree),
        "dot" => HttpResponse::Ok()
            .content_type("text/vnd.graphviz; charset=utf-8")
            .body(tree.to_dot()),
        "text" => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(tree.to_text()),
        _ => HttpResponse::BadRequest().body("format must be json, dot or text"),
    }
}

async fn events(
    req: HttpRequest,
    runtime: web::Data<Runtime>,
    token: web::Data<AdminToken>,
) -> HttpResponse {
    require_admin!(req, token);
    HttpResponse::Ok().json(runtime.supervision_events())
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum FaultRequest {
    CrashUser { user: String },
    StallSession { session: u64, ms: u64 },
}

async fn fault(
    req: HttpRequest,
    body: web::Bytes,
    runtime: web::Data<Runtime>,
    token: web::Data<AdminToken>,
) -> HttpResponse {
    require_admin!(req, token);
    if !is_json(&req) {
        return HttpResponse::BadRequest()
            .body("bad fault request: Content-Type must be application/json");
    }
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return HttpResponse::BadRequest().body(format!("bad fault request: {error}"))
        }
    };
    let fault = match request {
        FaultRequest::CrashUser { user } => match UserId::new(&user) {
            Ok(user) => Fault::CrashUser(user),
            Err(error) => return HttpResponse::BadRequest().body(error.to_string()),
        },
        FaultRequest::StallSession { session, ms } => Fault::StallSession {
            session: SessionId(session),
            duration: Duration::from_millis(ms).min(MAX_STALL),
        },
    };
    match runtime.inject_fault(fault).await {
        Ok(()) => HttpResponse::Accepted().body("injected"),
        Err(error) => HttpResponse::NotFound().body(error.to_string()),
    }
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn metrics(
    req: HttpRequest,
    runtime: web::Data<Runtime>,
    token: web::Data<AdminToken>,
) -> HttpResponse {
    require_admin!(req, token);
    match runtime.metrics_text().await {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(gone) => HttpResponse::ServiceUnavailable().body(gone.to_string()),
    }
}
