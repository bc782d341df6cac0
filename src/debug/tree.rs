//! The supervision tree as served to operators: nested nodes (JSON), Graphviz DOT, and an
//! indented text tree like `tree`'s, each built from one registry snapshot. The root names
//! the node it runs on (`registry@node_…` with the Redis engine, `registry@local` in
//! process), so trees fetched from several nodes of a cluster cannot be mixed up.

use std::fmt::Write;

use serde::Serialize;

use crate::registry::RegistrySnapshot;
use crate::stats::{ActorState, StatsSnapshot};

/// One node of the tree: the registry, a user, or a session.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    /// `registry`, `user` or `session`.
    pub kind: &'static str,
    /// `registry`, the user id, or the session number.
    pub id: String,
    /// The node the tree is of (the registry only): its id among the nodes sharing a
    /// Redis, or `local` for the in-process engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The engine keeping the users' streams (the registry only): `local` or `redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    /// The actor's counters (users and sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
    /// Totals over the whole tree (the registry only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// Supervised actors.
    pub children: Vec<TreeNode>,
}

/// Registry-wide figures.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// User actors (connected or within their resume window).
    pub users: usize,
    /// Open sockets.
    pub sessions: usize,
    /// Messages waiting in the registry's mailbox.
    pub registry_backlog: u64,
    /// Deliveries waiting in all user actors' inboxes.
    pub user_backlog: u64,
    /// Frames waiting for all sessions.
    pub session_backlog: u64,
    /// Bytes held by all replay buffers.
    pub replay_bytes: usize,
    /// Events dropped because their user had no actor.
    pub dropped_for_absent_users: u64,
    /// User actor restarts over the tree's current users.
    pub restarts: u64,
    /// True while the runtime drains.
    pub draining: bool,
}

impl From<&RegistrySnapshot> for TreeNode {
    fn from(snapshot: &RegistrySnapshot) -> Self {
        let mut totals = Totals {
            users: snapshot.users.len(),
            sessions: snapshot.session_count(),
            registry_backlog: snapshot.registry.backlog,
            user_backlog: 0,
            session_backlog: 0,
            replay_bytes: snapshot.replay_bytes,
            dropped_for_absent_users: snapshot.dropped_for_absent_users,
            restarts: 0,
            draining: snapshot.draining,
        };
        let children = snapshot
            .users
            .iter()
            .map(|(user_id, user)| {
                totals.user_backlog += user.stats.backlog;
                totals.restarts += u64::from(user.stats.restarts);
                let sessions = user
                    .sessions
                    .iter()
                    .map(|(session_id, stats)| {
                        totals.session_backlog += stats.backlog;
                        TreeNode {
                            kind: "session",
                            id: session_id.to_string(),
                            node: None,
                            engine: None,
                            stats: Some(stats.clone()),
                            totals: None,
                            children: Vec::new(),
                        }
                    })
                    .collect();
                TreeNode {
                    kind: "user",
                    id: user_id.clone(),
                    node: None,
                    engine: None,
                    stats: Some(user.stats.clone()),
                    totals: None,
                    children: sessions,
                }
            })
            .collect();
        TreeNode {
            kind: "registry",
            id: "registry".to_owned(),
            node: Some(snapshot.node.clone()),
            engine: Some(snapshot.engine),
            stats: None,
            totals: Some(totals),
            children,
        }
    }
}

/// A session is shown as lagging from this many frames of backlog.
pub const LAGGING_BACKLOG: u64 = 64;

impl TreeNode {
    /// `kind:id`, as the logs name actors; the registry as `registry@node`.
    fn name(&self) -> String {
        match (self.kind, &self.node) {
            ("registry", Some(node)) => format!("registry@{node}"),
            ("registry", None) => "registry".to_owned(),
            (kind, _) => format!("{kind}:{}", self.id),
        }
    }

    fn summary(&self) -> String {
        if let Some(t) = &self.totals {
            return format!(
                "engine={} users={} sessions={} backlog(registry)={} backlog(users)={} \
                 backlog(sessions)={} replay={}B restarts={} dropped(no user)={}{}",
                self.engine.unwrap_or("?"),
                t.users,
                t.sessions,
                t.registry_backlog,
                t.user_backlog,
                t.session_backlog,
                t.replay_bytes,
                t.restarts,
                t.dropped_for_absent_users,
                if t.draining { " DRAINING" } else { "" }
            );
        }
        let Some(s) = &self.stats else {
            return String::new();
        };
        let state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut line = format!(
            "{state} handled={} backlog={} bytes={} idle={}ms",
            s.handled, s.backlog, s.bytes, s.idle_for_ms
        );
        if s.restarts > 0 {
            let _ = write!(line, " restarts={}", s.restarts);
        }
        if self.kind == "session" && s.backlog >= LAGGING_BACKLOG {
            line.push_str(" LAGGING");
        }
        line
    }

    /// An indented text tree, one line per actor.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}  {}\n", self.name(), self.summary());
        self.children_text("", &mut out);
        out
    }

    fn children_text(&self, prefix: &str, out: &mut String) {
        for (i, child) in self.children.iter().enumerate() {
            let last = i + 1 == self.children.len();
            let (branch, next) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            let _ = writeln!(out, "{prefix}{branch}{}  {}", child.name(), child.summary());
            child.children_text(&format!("{prefix}{next}"), out);
        }
    }

    /// A Graphviz digraph: one node per actor, edges from supervisor to supervised; lagging
    /// sessions red, restarted users orange, idle users grey.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph agentwire {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n",
        );
        self.dot_nodes(&mut out);
        out.push_str("}\n");
        out
    }

    fn dot_nodes(&self, out: &mut String) {
        let color = match &self.stats {
            Some(s) if self.kind == "session" && s.backlog >= LAGGING_BACKLOG => "red",
            Some(s) if s.restarts > 0 => "orange",
            Some(s) if s.state == ActorState::Idle || s.state == ActorState::CutOff => "grey",
            _ => "black",
        };
        let _ = writeln!(
            out,
            "  {} [label={}, color={color}];",
            dot_string(&self.name()),
            dot_string(&format!("{}\\n{}", self.name(), self.summary()))
        );
        for child in &self.children {
            child.dot_nodes(out);
            let _ = writeln!(
                out,
                "  {} -> {};",
                dot_string(&self.name()),
                dot_string(&child.name())
            );
        }
    }
}

/// A DOT double-quoted string; `\n` sequences already in `s` stay line breaks.
fn dot_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'n') => {
                chars.next();
                out.push_str("\\n");
            }
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
