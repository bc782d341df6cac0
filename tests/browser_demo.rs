//! The demo page in a real browser (headless Chromium), against the real demo server: what
//! a person trying agentwire sees, run by run, tab by tab, through network cuts, reloads,
//! stops and a server restart. Screenshots of every step: target/browser-screenshots/.

mod browser;

use browser::demo_page::{self, ask, ask_synthetic, log_in, runs, wait_in_view, wait_last_run};
use browser::servers::{DemoServer, Proxy};
use browser::Browser;
use serde_json::json;

#[test]
fn the_golden_run_renders_and_the_answer_is_scrolled_into_view() {
    let browser = Browser::open("golden-run");
    let server = DemoServer::start(&[]);
    browser.goto(&server.url("/"));
    browser.screenshot("login page");
    log_in(&browser, &server.url("/"), "alice");
    browser.screenshot("connected");

    ask(&browser, "What is 6 times 7?");
    let run = wait_last_run(&browser, 1, "completed");
    assert!(run.request.contains("What is 6 times 7?"), "{run:?}");
    assert_eq!(run.types.first().map(String::as_str), Some("agent_started"));
    assert_eq!(
        run.types.last().map(String::as_str),
        Some("agent_completed")
    );
    let count = |t: &str| run.types.iter().filter(|x| *x == t).count();
    assert!(count("agent_thinking") >= 3, "{run:?}");
    assert_eq!(count("tool_executing"), 2, "two tool cards with arguments");
    assert_eq!(count("tool_completed"), 2, "and their results");
    let cards = browser.js(
        "return Array.from(document.querySelectorAll('.tool'), (t) => t.textContent);",
        json!([]),
    );
    let cards = cards.as_array().expect("cards");
    assert!(cards.iter().all(|c| {
        let c = c.as_str().unwrap_or_default();
        c.contains("arguments") && c.contains("result") && c.contains("ok ·")
    }));
    assert!(cards[0].as_str().unwrap_or_default().contains("web_search"));
    assert!(run.text.contains("Here is what I found"));
    let overflowing = browser.js(
        "const c = document.getElementById('conv'); return c.scrollHeight > c.clientHeight;",
        json!([]),
    );
    assert_eq!(overflowing, json!(true), "the run is taller than the view");
    wait_in_view(&browser, "the answer scrolled into view", ".answer");
    browser.screenshot("first answer");

    ask(&browser, "And what about 8 times 9?");
    wait_last_run(&browser, 2, "completed");
    wait_in_view(&browser, "the view to keep following", ".answer");
    browser.screenshot("second answer");
    let seqs: Vec<u64> = runs(&browser).iter().flat_map(|r| r.seqs.clone()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "no event shown twice");
    demo_page::assert_exactly_once_in_order(&sorted, 1, seqs.len() as u64);
}

#[test]
fn two_tabs_of_one_user_show_the_same_events_and_another_users_tab_none() {
    let browser = Browser::open("tabs-and-users");
    let server = DemoServer::start(&[]);
    let base = server.url("/");
    log_in(&browser, &base, "alice");
    let first = browser.tab();
    let second = browser.new_tab();
    log_in(&browser, &base, "alice");
    let bob = browser.new_tab();
    log_in(&browser, &base, "bob");

    browser.switch_to(&first);
    ask(&browser, "What is the capital of Norway?");
    let asked = wait_last_run(&browser, 1, "completed");
    browser.screenshot("alice's first tab");
    browser.switch_to(&second);
    let seen = wait_last_run(&browser, 1, "completed");
    browser.screenshot("alice's second tab");
    assert_eq!(seen.run_id, asked.run_id);
    assert_eq!(
        seen.seqs, asked.seqs,
        "the same events, with the same numbers"
    );
    assert_eq!(seen.types, asked.types);
    assert!(seen.request.contains("capital of Norway"));

    browser.switch_to(&bob);
    browser.screenshot("bob's tab");
    assert!(
        runs(&browser).is_empty(),
        "another user's tab shows none of it"
    );
    let bob_saw = browser.js(
        "return window.demo.client.runs.length + document.getElementById('rawList').textContent.indexOf('Norway');",
        json!([]),
    );
    assert_eq!(bob_saw, json!(-1), "not even in bob's raw frames");

    // A tab opened later shows alice's runs that the server still holds.
    browser.new_tab();
    log_in(&browser, &base, "alice");
    let later = wait_last_run(&browser, 1, "completed");
    browser.screenshot("alice's tab opened later");
    assert_eq!(later.run_id, asked.run_id);
    assert_eq!(later.seqs, asked.seqs);
    assert!(later.request.contains("capital of Norway"));
}

#[test]
fn a_cut_connection_resumes_with_every_event_exactly_once_in_order() {
    let browser = Browser::open("connection-cut");
    let server = DemoServer::start(&[]);
    let proxy = Proxy::start(server.addr);
    log_in(&browser, &proxy.url("/"), "carol");
    ask_synthetic(&browser, "count to 150", 150, 20);
    browser.wait_for(
        "40 events on the page",
        "document.querySelectorAll('[data-seq]').length >= 40",
    );
    proxy.cut();
    browser.wait_for(
        "the page to notice the cut",
        "document.querySelector('.run .notice') !== null",
    );
    browser.screenshot("connection cut");
    let run = wait_last_run(&browser, 1, "completed");
    browser.screenshot("resumed and completed");
    demo_page::assert_exactly_once_in_order(&run.seqs, 1, 150);
    // The notice sits in the run where it happened: between the events before the cut and
    // the ones after it.
    let order = browser.js(
        "return Array.from(document.querySelectorAll('article.run [data-seq], article.run .notice'),
           (e) => e.dataset.seq ? Number(e.dataset.seq) : e.textContent);",
        json!([]),
    );
    let order = order.as_array().expect("a list");
    let at = order
        .iter()
        .position(|e| e.as_str().is_some_and(|t| t.contains("reconnected after")))
        .unwrap_or_else(|| panic!("a notice in the run: {order:?}"));
    let before = order[..at].iter().filter_map(|e| e.as_u64()).max();
    let after = order[at + 1..].iter().filter_map(|e| e.as_u64()).min();
    assert!(
        before.is_some() && after.is_some() && before < after,
        "{order:?}"
    );
}

#[test]
fn a_reload_mid_run_resumes_the_run_in_place() {
    let browser = Browser::open("reload-mid-run");
    let server = DemoServer::start(&[]);
    log_in(&browser, &server.url("/"), "dave");
    ask_synthetic(&browser, "count to 100 slowly", 100, 30);
    browser.wait_for(
        "30 events on the page",
        "document.querySelectorAll('[data-seq]').length >= 30",
    );
    browser.screenshot("before the reload");
    browser.reload();
    demo_page::wait_connected(&browser);
    browser.screenshot("right after the reload");
    let run = wait_last_run(&browser, 1, "completed");
    browser.screenshot("the run finished in place");
    assert!(run.request.contains("count to 100 slowly"), "{run:?}");
    demo_page::assert_exactly_once_in_order(&run.seqs, 1, 100);
    let state = browser.js(
        "return { login: !document.getElementById('login').hidden,
                  logins: performance.getEntriesByName(location.origin + '/demo/login').length };",
        json!([]),
    );
    assert_eq!(state["login"], false, "the reload kept the tab logged in");
    assert_eq!(state["logins"], 0, "with the token the client kept");
}

#[test]
fn stop_marks_the_run_stopped_and_closes_its_cards() {
    let browser = Browser::open("stop");
    let server = DemoServer::start(&[]);
    log_in(&browser, &server.url("/"), "erin");
    ask(&browser, "Tell me about the sea");
    // Click Stop the moment a tool card opens (it stays open for at least 450 ms).
    let clicked = browser.js_async(
        "const done = arguments[arguments.length - 1];
         const open = () => Array.from(document.querySelectorAll('.tool .pill')).some((p) => p.textContent === 'running…');
         const click = () => { document.getElementById('stop').click(); done(true); };
         if (open()) return click();
         const seen = new MutationObserver(() => { if (open()) { seen.disconnect(); click(); } });
         seen.observe(document.getElementById('conv'), { childList: true, subtree: true, characterData: true });",
        json!([]),
    );
    assert_eq!(clicked, json!(true));
    let run = wait_last_run(&browser, 1, "stopped");
    browser.screenshot("stopped");
    assert_eq!(run.types.last().map(String::as_str), Some("agent_error"));
    let shown = browser.js(
        "return { running: Array.from(document.querySelectorAll('.pill'), (p) => p.textContent).filter((t) => t.startsWith('running')),
                  tool: document.querySelector('.tool .pill').textContent,
                  run: document.querySelector('.run-head .pill').textContent,
                  stops: Array.from(document.querySelectorAll('#stop, .stop-run'), (b) => b.disabled) };",
        json!([]),
    );
    assert_eq!(shown["running"], json!([]), "nothing still says running");
    assert_eq!(shown["tool"], "stopped", "the open tool card is closed");
    assert_eq!(shown["run"], "stopped");
    assert_eq!(shown["stops"], json!([true, true]), "nothing left to stop");
}

#[test]
fn a_server_restart_shows_the_run_interrupted_and_the_next_question_works() {
    let browser = Browser::open("server-restart");
    let mut server = DemoServer::start(&["--drain-timeout-ms", "2000"]);
    log_in(&browser, &server.url("/"), "fred");
    ask_synthetic(&browser, "a long job", 400, 50);
    browser.wait_for(
        "20 events on the page",
        "document.querySelectorAll('[data-seq]').length >= 20",
    );
    server.terminate();
    browser.wait_for(
        "the page to say it is reconnecting",
        "document.getElementById('status').textContent.includes('retrying')",
    );
    browser.screenshot("server stopped");
    server.restart();
    let run = wait_last_run(&browser, 1, "interrupted");
    demo_page::wait_connected(&browser);
    browser.screenshot("interrupted after the restart");
    browser.js(
        "document.querySelector('article.run').scrollIntoView();",
        json!([]),
    );
    browser.screenshot("the interrupted run");
    assert!(run.text.contains("the server restarted"), "{run:?}");
    let stop = browser.js(
        "return Array.from(document.querySelectorAll('#stop, .stop-run'), (b) => b.disabled);",
        json!([]),
    );
    assert_eq!(
        stop,
        json!([true, true]),
        "an interrupted run cannot be stopped"
    );

    ask(&browser, "Is it back?");
    let next = wait_last_run(&browser, 2, "completed");
    browser.screenshot("the next question works");
    assert!(next.request.contains("Is it back?"));
    assert_eq!(runs(&browser)[0].status, "interrupted");
}
