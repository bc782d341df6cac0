//! What each agentwire server the bench started says about itself on `/metrics`: its open
//! sessions (so the report shows where the sockets really are, node by node) and the Redis
//! engine's repair counters (gaps filled from history, resyncs, failed Redis operations),
//! which a client never sees when the engine does its job.

use std::net::SocketAddr;
use std::time::Duration;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's figures at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeMetrics {
    /// `agentwire_sessions`: open WebSocket sessions.
    pub sessions: u64,
    /// `agentwire_engine_gaps_repaired_total`.
    pub gaps_repaired: u64,
    /// `agentwire_engine_resyncs_total`.
    pub resyncs: u64,
    /// `agentwire_engine_errors_total`, every part.
    pub engine_errors: u64,
}

/// Scrapes every node; `None` when any of them cannot be read (the report then leaves
/// these figures out rather than show a partial sum).
pub fn scrape_all(addrs: &[SocketAddr], admin_token: &str) -> Option<Vec<NodeMetrics>> {
    addrs
        .iter()
        .map(|addr| match scrape(*addr, admin_token) {
            Ok(metrics) => Some(metrics),
            Err(e) => {
                eprintln!("cannot read the metrics of {addr}: {e}");
                None
            }
        })
        .collect()
}

fn scrape(addr: SocketAddr, admin_token: &str) -> Result<NodeMetrics, String> {
    let text = ureq::get(&format!("http://{addr}/metrics"))
        .header("Authorization", &format!("Bearer {admin_token}"))
        .config()
        .timeout_global(Some(SCRAPE_TIMEOUT))
        .build()
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(parse(&text))
}

/// Sums the samples of each family the bench reads (a family with labels has several).
fn parse(text: &str) -> NodeMetrics {
    let mut metrics = NodeMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value.max(0.0) as u64;
        match name {
            "agentwire_sessions" => metrics.sessions += value,
            "agentwire_engine_gaps_repaired_total" => metrics.gaps_repaired += value,
            "agentwire_engine_resyncs_total" => metrics.resyncs += value,
            "agentwire_engine_errors_total" => metrics.engine_errors += value,
            _ => {}
        }
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_with_labels_are_summed_and_others_ignored() {
        let text = "# HELP agentwire_sessions Open WebSocket sessions.\n\
                    # TYPE agentwire_sessions gauge\n\
                    agentwire_sessions 20\n\
                    agentwire_engine_errors_total{part=\"publish\"} 2\n\
                    agentwire_engine_errors_total{part=\"subscribe\"} 1\n\
                    agentwire_engine_gaps_repaired_total 3\n\
                    agentwire_engine_resyncs_total 0\n\
                    agentwire_users 7\n\
                    # EOF\n";
        let m = parse(text);
        assert_eq!(
            (m.sessions, m.engine_errors, m.gaps_repaired, m.resyncs),
            (20, 3, 3, 0)
        );
    }
}
