//! The Prometheus text exposition, parsed, so tests compare exact values instead of
//! searching the text (where `agentwire_sessions 1` would also match `... 12`).

use std::collections::BTreeMap;

/// Every sample of one scrape, by series: the metric name with its labels exactly as
/// exposed, for example `agentwire_disconnects_total{code="1006"}`.
pub struct Exposition {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Exposition {
    /// Parses `text`; panics on a line that is neither a comment nor `series value`.
    pub fn parse(text: &str) -> Exposition {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line is `series value`: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a numeric value in {line:?}"));
            let previous = samples.insert(series.to_owned(), value);
            assert!(previous.is_none(), "{series} exposed twice");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        Exposition {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of `series`; panics (showing the scrape) when it is not exposed.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(value) => *value,
            None => panic!("{series} is not exposed:\n{}", self.text),
        }
    }

    /// The value of `series`, or `None` when it is not exposed (a labelled counter appears
    /// only after its first increment).
    pub fn find(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// Every series whose name starts with `prefix`, with its value.
    pub fn series(&self, prefix: &str) -> BTreeMap<&str, f64> {
        self.samples
            .iter()
            .filter(|(series, _)| series.starts_with(prefix))
            .map(|(series, value)| (series.as_str(), *value))
            .collect()
    }

    /// The raw text, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl super::TestServer {
    /// Scrapes `/metrics` with the admin token and parses it.
    pub async fn metrics(&self) -> Exposition {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        Exposition::parse(&text)
    }
}
