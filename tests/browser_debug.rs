//! The operator page (`/debug`) in a real browser (headless Chromium) against the real demo
//! server: it loads with the admin token, lists the connected users and their sessions,
//! marks a user whose actor was restarted after a fault (while that user's demo tab carries
//! on and says plainly that nothing was missed), and takes a new token pasted into the
//! address bar of a tab that already shows it.

mod browser;

#[path = "../src/engine/redis/test_server.rs"]
#[allow(dead_code)]
mod test_server;

use browser::demo_page::{self, ask, ask_synthetic, log_in, wait_last_run};
use browser::servers::{DemoServer, ADMIN_TOKEN};
use browser::Browser;
use serde_json::json;

fn wait_live(browser: &Browser) {
    browser.wait_for(
        "the debug page to be live",
        "document.getElementById('status').textContent === 'live'",
    );
}

/// The text of each row of the tree table.
fn rows(browser: &Browser) -> Vec<String> {
    let rows = browser.js(
        "return Array.from(document.querySelectorAll('#tree tr'), (r) => r.textContent);",
        json!([]),
    );
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_debug_page_lists_users_and_sessions_and_marks_a_restarted_user() {
    let browser = Browser::open("debug-page");
    let server = DemoServer::start(&[]);
    let base = server.url("/");
    log_in(&browser, &base, "alice");
    let alice = browser.tab();
    browser.new_tab();
    log_in(&browser, &base, "alice");
    browser.new_tab();
    log_in(&browser, &base, "bob");

    let debug = browser.new_tab();
    browser.goto(&server.url(&format!("/debug#token={}", ADMIN_TOKEN.replace(' ', "%20"))));
    wait_live(&browser);
    assert_eq!(node_shown(&browser), "node local · local engine");
    browser.wait_for(
        "alice and bob in the tree",
        "document.getElementById('treeCount').textContent.startsWith('2 of 2 users')",
    );
    browser.click("#expandAll");
    let shown = rows(&browser);
    browser.screenshot("users and sessions");
    let users: Vec<&String> = shown.iter().filter(|r| !r.contains("session")).collect();
    assert!(
        users[0].starts_with("▾alice") && users[1].starts_with("▾bob"),
        "{shown:?}"
    );
    let sessions = shown.iter().filter(|r| r.starts_with("└ session")).count();
    assert_eq!(sessions, 3, "alice's two tabs and bob's one: {shown:?}");
    let totals = browser.js(
        "return document.getElementById('totals').textContent;",
        json!([]),
    );
    let totals = totals.as_str().unwrap_or_default();
    assert!(
        totals.contains("2users") && totals.contains("3sessions"),
        "{totals}"
    );

    // A fault restarts alice's actor while a run of hers is under way.
    browser.switch_to(&alice);
    ask_synthetic(&browser, "keep going", 150, 30);
    browser.wait_for(
        "some events",
        "document.querySelectorAll('[data-seq]').length >= 20",
    );
    server.crash_user("alice");
    browser.switch_to(&debug);
    browser.wait_for(
        "alice marked restarted",
        "Array.from(document.querySelectorAll('#tree tr')).some((r) => r.textContent.startsWith('▾alice') && r.querySelector('.b-recent'))",
    );
    browser.screenshot("alice restarted");
    let alice_row = rows(&browser)
        .into_iter()
        .find(|r| r.starts_with("▾alice"))
        .expect("alice's row");
    assert!(alice_row.contains("restarted"), "{alice_row}");
    let bob_row = rows(&browser)
        .into_iter()
        .find(|r| r.starts_with("▾bob"))
        .expect("bob's row");
    assert!(!bob_row.contains("restarted"), "{bob_row}");
    // The supervision log is polled every 2 s, the tree every second.
    browser.wait_for(
        "the restart in the supervision log",
        "document.getElementById('events').textContent.includes('restartuser:alice')",
    );
    browser.screenshot("the supervision log");

    // Alice's tab says what happened, without claiming events were missed, and carries on.
    browser.switch_to(&alice);
    let run = wait_last_run(&browser, 1, "completed");
    browser.js(
        "document.querySelector('.run .notice.warn').scrollIntoView({ block: 'center' });",
        json!([]),
    );
    browser.screenshot("alice's tab after the restart");
    let said = demo_page::notices(&browser).join("\n");
    assert!(
        said.contains(
            "restarted this user's session after an internal error; no events were missed"
        ),
        "{said}"
    );
    assert!(!said.contains("missed while away"), "{said}");
    assert!(run.types.contains(&"agent_completed".to_owned()));
    ask(&browser, "Still there?");
    wait_last_run(&browser, 2, "completed");
    browser.screenshot("alice's next question");
}

/// The node the page's header names, once it names one.
fn node_shown(browser: &Browser) -> String {
    let shown = browser.wait_for(
        "the header to name the node",
        "!document.getElementById('node').hidden && document.getElementById('node').textContent",
    );
    shown.as_str().unwrap_or_default().to_owned()
}

#[test]
fn the_debug_page_of_a_node_on_redis_names_the_node() {
    let redis = test_server::TestRedis::start();
    let browser = Browser::open("debug-page-cluster-node");
    let server = DemoServer::start(&["--redis", &redis.url(), "--redis-prefix", "page"]);
    browser.goto(&server.url(&format!("/debug#token={}", ADMIN_TOKEN.replace(' ', "%20"))));
    wait_live(&browser);
    let shown = node_shown(&browser);
    browser.screenshot("the node in the header");
    let node = shown
        .strip_prefix("node ")
        .and_then(|s| s.strip_suffix(" · redis engine"))
        .unwrap_or_else(|| panic!("{shown}"));
    // The id the cluster knows the node by: it holds a lease under it.
    assert_eq!(
        redis.command(&format!("SISMEMBER page:nodes {node}")),
        ":1",
        "{shown}"
    );
    let title = browser.js("return document.title;", json!([]));
    assert!(
        title.as_str().is_some_and(|t| t.ends_with(node)),
        "the tab's title names the node: {title}"
    );
}

#[test]
fn a_token_pasted_into_an_open_debug_tab_is_taken() {
    let browser = Browser::open("debug-token-fragment");
    let server = DemoServer::start(&[]);
    browser.goto(&server.url("/debug#token=not-the-token"));
    browser.wait_for(
        "the page to refuse the token",
        "document.getElementById('status').textContent === 'wrong admin token'",
    );
    browser.screenshot("wrong token");
    browser.js("window.sameDocument = true;", json!([]));

    // As when a link is pasted into the address bar: only the fragment changes.
    browser.goto(&server.url(&format!("/debug#token={}", ADMIN_TOKEN.replace(' ', "%20"))));
    wait_live(&browser);
    browser.screenshot("right token");
    let state = browser.js(
        "return { same: window.sameDocument === true, url: location.href,
                  saved: sessionStorage.getItem('agentwire.debug.token') };",
        json!([]),
    );
    assert_eq!(state["same"], true, "the tab was not reloaded");
    assert_eq!(state["saved"], ADMIN_TOKEN);
    assert!(
        !state["url"].as_str().unwrap_or_default().contains("token"),
        "the token leaves the address bar: {state}"
    );
}
