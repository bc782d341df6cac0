//! The demo page as a user sees it: logging in, asking, and reading back what the page shows
//! (each rendered event carries `data-seq` and `data-type`; each run `data-run` and
//! `data-status`).

use serde_json::{json, Value};

use super::Browser;

/// A run as the page shows it.
#[derive(Debug, Clone)]
pub struct ShownRun {
    pub run_id: String,
    pub status: String,
    /// The `seq` of every event rendered in the run, in the page's order.
    pub seqs: Vec<u64>,
    pub types: Vec<String>,
    pub request: String,
    pub text: String,
}

/// Opens the demo page at `base` and logs in as `user` through the form.
pub fn log_in(browser: &Browser, base: &str, user: &str) {
    browser.goto(base);
    browser.wait_for("the login form", "!document.getElementById('login').hidden");
    browser.js("document.getElementById('name').value = '';", json!([]));
    browser.type_into("#name", user);
    browser.click("#loginBtn");
    wait_connected(browser);
}

/// Waits until the page says it is connected.
pub fn wait_connected(browser: &Browser) {
    browser.wait_for(
        "the page to say connected",
        "document.getElementById('status').textContent === 'connected'",
    );
}

/// Types `question` into the composer and presses Enter.
pub fn ask(browser: &Browser, question: &str) {
    browser.type_into("#input", &format!("{question}\u{E007}"));
}

/// Asks through the page's own `ask` (the composer's path) with a `context`, for the
/// demo agent's synthetic runs: `events` events, `interval_ms` apart.
pub fn ask_synthetic(browser: &Browser, question: &str, events: u64, interval_ms: u64) {
    let sent = browser.js(
        "return window.demo.ask(arguments[0], { synthetic: { events: arguments[1], interval_ms: arguments[2] } });",
        json!([question, events, interval_ms]),
    );
    assert_eq!(sent, json!(true), "the page sent the request");
}

/// Every run the page shows, in page order.
pub fn runs(browser: &Browser) -> Vec<ShownRun> {
    let value = browser.js(
        "return Array.from(document.querySelectorAll('article.run')).map((a) => ({
           run: a.dataset.run, status: a.dataset.status || '',
           seqs: Array.from(a.querySelectorAll('[data-seq]'), (e) => Number(e.dataset.seq)),
           types: Array.from(a.querySelectorAll('[data-seq]'), (e) => e.dataset.type),
           request: a.querySelector('.req').textContent, text: a.textContent }));",
        json!([]),
    );
    value
        .as_array()
        .expect("a list of runs")
        .iter()
        .map(|r| ShownRun {
            run_id: r["run"].as_str().unwrap_or_default().to_owned(),
            status: r["status"].as_str().unwrap_or_default().to_owned(),
            seqs: r["seqs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            types: r["types"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            request: r["request"].as_str().unwrap_or_default().to_owned(),
            text: r["text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// Waits until the page shows `count` runs, the last of them with `status`.
pub fn wait_last_run(browser: &Browser, count: usize, status: &str) -> ShownRun {
    browser.wait_for(
        &format!("run {count} to be {status}"),
        &format!(
            "(() => {{ const a = document.querySelectorAll('article.run');
               return a.length === {count} && a[{count} - 1].dataset.status === '{status}'; }})()"
        ),
    );
    runs(browser).pop().expect("a run")
}

/// The page's notices (connection and resync messages), in page order.
pub fn notices(browser: &Browser) -> Vec<String> {
    let value = browser.js(
        "return Array.from(document.querySelectorAll('.notice'), (n) => n.textContent);",
        json!([]),
    );
    value
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

/// Waits until `css` (its last match) is inside the conversation's visible area (the page
/// scrolls once per animation frame).
pub fn wait_in_view(browser: &Browser, what: &str, css: &str) {
    browser.wait_for(
        what,
        &format!(
            "(() => {{ const all = document.querySelectorAll('{css}'); const e = all[all.length - 1];
               if (!e) return false;
               const r = e.getBoundingClientRect(), c = document.getElementById('conv').getBoundingClientRect();
               return r.top >= c.top - 1 && r.bottom <= c.bottom + 1; }})()"
        ),
    );
}

/// Asserts that `seqs` goes up by exactly one from `first` to `last`.
pub fn assert_exactly_once_in_order(seqs: &[u64], first: u64, last: u64) {
    let expected: Vec<u64> = (first..=last).collect();
    assert_eq!(
        seqs, expected,
        "every event exactly once, in order ({first}..={last})"
    );
}
