//! Operator routes: the live supervision tree, behind an admin token.
//!
//! Off unless the application mounts [`debug_routes`]; `agentwire serve` mounts them. Every
//! request needs `Authorization: Bearer <admin token>` (compared in constant time); anything
//! else gets 401. `GET /debug/tree` returns the registry, its users and their sessions as
//! nested JSON nodes (`kind`, `id`, `stats`, `children`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::registry::RegistrySnapshot;
use crate::runtime::Runtime;
use crate::stats::StatsSnapshot;

/// The admin token guarding the debug routes.
#[derive(Clone)]
struct AdminToken(String);

/// Mounts `GET /debug/tree` behind `Authorization: Bearer <admin_token>`.
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
        cfg.service(
            web::scope("/debug")
                .app_data(web::Data::new(runtime))
                .app_data(web::Data::new(token))
                .route("/tree", web::get().to(tree)),
        );
    }
}

/// One node of the tree as served.
#[derive(Debug, Serialize)]
pub struct TreeNode {
    /// `registry`, `user` or `session`.
    pub kind: &'static str,
    /// The actor's id (`registry`, the user id, or the session number).
    pub id: String,
    /// The actor's counters (none for the registry itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
    /// Supervised actors.
    pub children: Vec<TreeNode>,
}

impl From<&RegistrySnapshot> for TreeNode {
    fn from(snapshot: &RegistrySnapshot) -> Self {
        let users = snapshot
            .users
            .iter()
            .map(|(user_id, user)| TreeNode {
                kind: "user",
                id: user_id.clone(),
                stats: Some(user.stats.clone()),
                children: user
                    .sessions
                    .iter()
                    .map(|(session_id, stats)| TreeNode {
                        kind: "session",
                        id: session_id.to_string(),
                        stats: Some(stats.clone()),
                        children: Vec::new(),
                    })
                    .collect(),
            })
            .collect();
        TreeNode {
            kind: "registry",
            id: "registry".to_owned(),
            stats: None,
            children: users,
        }
    }
}

fn authorized(req: &HttpRequest, token: &AdminToken) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.0.as_bytes()) && !token.0.is_empty()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn tree(
    req: HttpRequest,
    runtime: web::Data<Runtime>,
    token: web::Data<AdminToken>,
) -> HttpResponse {
    if !authorized(&req, &token) {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .body("unauthorized");
    }
    match runtime.snapshot().await {
        Ok(snapshot) => HttpResponse::Ok().json(TreeNode::from(&snapshot)),
        Err(gone) => HttpResponse::ServiceUnavailable().body(gone.to_string()),
    }
}
