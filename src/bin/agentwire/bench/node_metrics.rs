//! What each agentwire server the bench started says about itself on `/metrics`: its open
//! sessions (so the report shows where the sockets really are, node by node), the Redis
//! engine's repair counters (gaps filled from history, resyncs, failed Redis operations),
//! which a client never sees when the engine does its job, and the server's own latency
//! histograms (emission to socket write, and with the `stage-times` feature the wait in
//! each queue), which split the latency a client measures into where it was spent.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::time::Duration;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A histogram as Prometheus exposes it: cumulative counts by upper bound (seconds),
/// in increasing order, the last bound infinite.
pub type Buckets = Vec<(f64, u64)>;

/// One node's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct NodeMetrics {
    /// `agentwire_sessions`: open WebSocket sessions.
    pub sessions: u64,
    /// `agentwire_engine_gaps_repaired_total`.
    pub gaps_repaired: u64,
    /// `agentwire_engine_resyncs_total`.
    pub resyncs: u64,
    /// `agentwire_engine_errors_total`, every part.
    pub engine_errors: u64,
    /// `written` (`agentwire_delivery_latency_seconds`), and `inbox` and `outbox`
    /// (`agentwire_stage_wait_seconds`, servers built with `stage-times` only).
    pub histograms: BTreeMap<&'static str, Buckets>,
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
        if let Some((histogram, bound)) = bucket(name) {
            if let Ok(count) = value.parse::<f64>() {
                metrics
                    .histograms
                    .entry(histogram)
                    .or_default()
                    .push((bound, count.max(0.0) as u64));
            }
            continue;
        }
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

/// `name` (a sample's name with its labels) as a bucket of one of the histograms the bench
/// reads: the report's name for the histogram, and the bucket's bound.
fn bucket(name: &str) -> Option<(&'static str, f64)> {
    let (metric, labels) = name.split_once('{')?;
    let (mut le, mut stage) = (None, None);
    for pair in labels.strip_suffix('}')?.split(',') {
        let (key, value) = pair.split_once('=')?;
        let value = value.trim_matches('"');
        match key {
            "le" => le = Some(value),
            "stage" => stage = Some(value),
            _ => {}
        }
    }
    let histogram = match (metric, stage) {
        ("agentwire_delivery_latency_seconds_bucket", None) => "written",
        ("agentwire_stage_wait_seconds_bucket", Some("inbox")) => "inbox",
        ("agentwire_stage_wait_seconds_bucket", Some("outbox")) => "outbox",
        _ => return None,
    };
    let bound = match le? {
        "+Inf" => f64::INFINITY,
        bound => bound.parse().ok()?,
    };
    Some((histogram, bound))
}

/// The counts that went into `name` between `before` and `after`, summed over the nodes:
/// `None` when a node does not expose it.
pub fn histogram_growth(
    name: &str,
    before: &[NodeMetrics],
    after: &[NodeMetrics],
) -> Option<Buckets> {
    let mut sum: Option<Buckets> = None;
    for (b, a) in before.iter().zip(after) {
        let (b, a) = (b.histograms.get(name)?, a.histograms.get(name)?);
        let grown: Buckets = a
            .iter()
            .zip(b)
            .map(|(&(bound, after), &(_, before))| (bound, after.saturating_sub(before)))
            .collect();
        sum = Some(match sum {
            None => grown,
            Some(total) => total
                .iter()
                .zip(&grown)
                .map(|(&(bound, x), &(_, y))| (bound, x + y))
                .collect(),
        });
    }
    sum
}

/// The `q` quantile (0 to 1) of cumulative `buckets`, in seconds, interpolated linearly
/// within its bucket (so no finer than the buckets: each is twice the one before); `None`
/// when nothing was counted. A quantile in the last, unbounded bucket is its lower bound.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= target {
            if bound.is_infinite() {
                return Some(lower);
            }
            let within = (count - below).max(1) as f64;
            return Some(lower + (bound - lower) * (target - below as f64) / within);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
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
        assert!(m.histograms.is_empty());
    }

    #[test]
    fn histograms_are_read_subtracted_and_summed_and_give_quantiles() {
        let scrape = |counts: [u64; 3], inbox: u64| {
            parse(&format!(
                "agentwire_delivery_latency_seconds_bucket{{le=\"0.001\"}} {}\n\
                 agentwire_delivery_latency_seconds_bucket{{le=\"0.002\"}} {}\n\
                 agentwire_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 agentwire_delivery_latency_seconds_sum 1.5\n\
                 agentwire_stage_wait_seconds_bucket{{le=\"0.001\",stage=\"inbox\"}} {inbox}\n\
                 agentwire_stage_wait_seconds_bucket{{le=\"+Inf\",stage=\"inbox\"}} {inbox}\n",
                counts[0], counts[1], counts[2]
            ))
        };
        let before = [scrape([10, 10, 10], 0), scrape([0, 0, 0], 0)];
        let after = [scrape([60, 110, 110], 4), scrape([0, 100, 100], 4)];
        let written = histogram_growth("written", &before, &after).expect("exposed");
        assert_eq!(
            written,
            vec![(0.001, 50), (0.002, 200), (f64::INFINITY, 200)]
        );
        // The median, the 100th of 200, is halfway through the second bucket.
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
        assert!(close(quantile(&written, 0.5), 0.001 + 0.001 * 50.0 / 150.0));
        assert!(close(quantile(&written, 1.0), 0.002));
        let inbox = histogram_growth("inbox", &before, &after).expect("exposed");
        assert!(close(quantile(&inbox, 0.99), 0.001 * 0.99));
        assert_eq!(histogram_growth("outbox", &before, &after), None);
    }
}
