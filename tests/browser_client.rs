//! agentwire.js, the client library, in a real browser (headless Chromium) against the real
//! demo server: the reconnect behaviour a front end relies on, made deterministic. The
//! backoff is set to a minute and `Math.random` pinned, so any reconnect within the test's
//! patience was caused by what the test did: `reconnectNow()`, the `online` event, the tab
//! becoming visible, a drain (1012), or a token about to expire.

mod browser;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use browser::servers::{DemoServer, Proxy, JWT_SECRET};
use browser::Browser;
use serde_json::{json, Value};

/// Imports the module into the page and starts `window.c`, logging into `window.log`.
/// Options: `user`, and `doubling` (a WebSocket that delivers every event twice and
/// re-delivers the one before it).
const START: &str = r#"
const done = arguments[arguments.length - 1], opts = arguments[0];
import('/agentwire.js').then(({ AgentwireClient }) => {
  Math.random = () => 0.99;
  window.tokens = opts.tokens || [];
  const log = window.log = { states: [], events: [], runs: [], resyncs: [], tokenCalls: [] };
  class Doubling extends WebSocket {
    set onmessage(fn) {
      if (!fn) { super.onmessage = null; return; }
      let previous = null;
      super.onmessage = (m) => {
        fn(m);
        if (!/"seq":/.test(m.data) || /"type":"welcome"/.test(m.data)) return;
        fn(m);
        if (previous) fn(previous);
        previous = m;
      };
    }
  }
  const options = { url: '/ws', storage: null, backoffBaseMs: 60000, backoffMaxMs: 60000,
    getToken: async (request) => {
      log.tokenCalls.push(request.reason);
      if (window.tokens && window.tokens.length) return window.tokens.shift();
      const res = await fetch('/demo/login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user: opts.user }) });
      return (await res.json()).token;
    } };
  if (opts.doubling) options.WebSocket = Doubling;
  if (opts.storageKey) Object.assign(options, { storage: 'session', storageKey: opts.storageKey });
  const c = window.c = new AgentwireClient(options);
  // What the client reports, shown on the page for the screenshots.
  const shown = document.createElement('pre');
  shown.style.cssText = 'position:fixed;inset:auto 0 0 0;max-height:60%;overflow:auto;margin:0;padding:8px;background:#fff;border-top:2px solid #3b5bdb;font:12px/1.4 monospace;z-index:9';
  document.body.appendChild(shown);
  const line = (text) => { shown.textContent += new Date().toISOString().slice(11, 23) + '  ' + text + '\n'; shown.scrollTop = shown.scrollHeight; };
  c.on('state', (s) => line('state ' + s.state + ' (' + s.reason + '): ' + s.message + (s.delay != null ? ', retry in ' + s.delay + ' ms' : '')));
  c.on('resync', (r) => line('resync (' + r.reason + '): ' + r.message + '; interrupted ' + r.interrupted.join(', ')));
  c.on('run', (r, previous) => line('run ' + r.runId + ': ' + (previous || 'new') + ' -> ' + r.status));
  c.on('state', (s) => log.states.push({ state: s.state, reason: s.reason, message: s.message,
    delay: s.delay, code: s.code, session: s.welcome ? s.welcome.session_id : null }));
  c.on('event', (e) => log.events.push(e.seq));
  c.on('resumed', (r) => log.resumed = r);
  c.on('run', (r, previous) => log.runs.push([r.runId, r.status, previous]));
  c.on('resync', (r) => log.resyncs.push(r));
  c.connect();
  done(true);
}, (err) => done(String(err)));
"#;

fn start_client(browser: &Browser, base: &str, user: &str, doubling: bool) {
    start_client_with(browser, base, json!({ "user": user, "doubling": doubling }));
}

fn start_client_with(browser: &Browser, base: &str, options: Value) {
    browser.goto(base);
    start_on_this_page(browser, options);
}

fn start_on_this_page(browser: &Browser, options: Value) {
    let started = browser.js_async(START, json!([options]));
    assert_eq!(started, json!(true));
    wait_state(browser, "open");
}

fn wait_state(browser: &Browser, state: &str) {
    browser.wait_for(
        &format!("the client to be {state}"),
        &format!("window.c.state === '{state}'"),
    );
}

fn last_state(browser: &Browser) -> Value {
    browser.js(
        "return window.log.states[window.log.states.length - 1];",
        json!([]),
    )
}

/// Cuts the connection while the server is unreachable; the client waits about a minute.
fn lose_the_server(browser: &Browser, proxy: &Proxy) {
    proxy.refuse(true);
    proxy.cut();
    wait_state(browser, "reconnecting");
    let state = last_state(browser);
    assert!(state["delay"].as_u64() > Some(30_000), "{state}");
    assert_eq!(state["message"], "the connection was lost");
}

#[test]
fn reconnect_now_online_and_a_visible_tab_reconnect_at_once() {
    let browser = Browser::open("client-wake-ups");
    let server = DemoServer::start(&[]);
    let proxy = Proxy::start(server.addr);
    start_client(&browser, &proxy.url("/"), "wendy", false);

    // reconnectNow() while the server is still unreachable: a plain reason, not an error dump.
    lose_the_server(&browser, &proxy);
    for _ in 0..2 {
        assert_eq!(
            browser.js("return window.c.reconnectNow();", json!([])),
            json!(true)
        );
        wait_state(&browser, "reconnecting");
    }
    let messages = browser.js(
        "return window.log.states.filter((s) => s.state === 'reconnecting').map((s) => s.message);",
        json!([]),
    );
    assert!(
        messages
            .as_array()
            .expect("messages")
            .iter()
            .skip(1)
            .all(|m| m == "cannot reach the server"),
        "{messages}"
    );
    browser.screenshot("unreachable");
    proxy.refuse(false);
    assert_eq!(
        browser.js("return window.c.reconnectNow();", json!([])),
        json!(true)
    );
    wait_state(&browser, "open");
    assert_no_reason_leaks(&browser);

    // The browser's `online` event.
    lose_the_server(&browser, &proxy);
    proxy.refuse(false);
    browser.js("window.dispatchEvent(new Event('online'));", json!([]));
    wait_state(&browser, "open");
    assert!(connected_because(&browser, "online"));

    // A hidden tab does nothing; once visible, it reconnects.
    lose_the_server(&browser, &proxy);
    proxy.refuse(false);
    set_visibility(&browser, "hidden");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        browser.js("return window.c.state;", json!([])),
        "reconnecting"
    );
    set_visibility(&browser, "visible");
    wait_state(&browser, "open");
    assert!(connected_because(&browser, "visible"));
    browser.screenshot("reconnected");
    assert_eq!(
        browser.js("return window.c.reconnectNow();", json!([])),
        json!(false),
        "nothing to do when open"
    );
}

#[test]
fn a_tab_coming_back_finds_a_silently_dead_connection_at_once() {
    let browser = Browser::open("client-half-open");
    let server = DemoServer::start(&[]);
    let proxy = Proxy::start(server.addr);
    start_client(&browser, &proxy.url("/"), "hugo", false);
    let first = browser.js("return window.c.sessionId;", json!([]));
    // As after a laptop slept: the connection looks open but nothing gets through. The
    // heartbeat alone would notice after 2.5 intervals (25 s); a tab coming back asks.
    proxy.silence();
    std::thread::sleep(Duration::from_millis(1100));
    set_visibility(&browser, "visible");
    browser.wait_for(
        "a new session",
        &format!("window.c.state === 'open' && window.c.sessionId !== {first}"),
    );
    browser.screenshot("a new connection");
    let reconnecting = browser.js(
        "return window.log.states.filter((s) => s.state === 'reconnecting');",
        json!([]),
    );
    assert_eq!(reconnecting[0]["message"], "no answer from the server");
    assert_eq!(reconnecting[0]["delay"], 0);
}

fn set_visibility(browser: &Browser, state: &str) {
    browser.js(
        "Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => arguments[0] });
         document.dispatchEvent(new Event('visibilitychange'));",
        json!([state]),
    );
}

fn connected_because(browser: &Browser, reason: &str) -> bool {
    browser.js(
        "const s = window.log.states; return s[s.length - 2].state === 'connecting' && s[s.length - 2].reason === arguments[0];",
        json!([reason]),
    ) == json!(true)
}

fn assert_no_reason_leaks(browser: &Browser) {
    let all = browser.js(
        "return window.log.states.map((s) => s.message).join(' | ');",
        json!([]),
    );
    let all = all.as_str().unwrap_or_default();
    assert!(
        !all.contains("TypeError") && !all.contains("Failed to fetch") && !all.contains("1006"),
        "{all}"
    );
}

#[test]
fn a_drain_reconnects_at_once_to_whichever_server_answers() {
    let browser = Browser::open("client-drain");
    let mut first = DemoServer::start(&["--drain-timeout-ms", "2000"]);
    let second = DemoServer::start(&[]);
    let proxy = Proxy::start(first.addr);
    start_client(&browser, &proxy.url("/"), "dora", false);
    browser.js(
        "window.c.startAgent('long', { context: { synthetic: { events: 400, interval_ms: 50 } } });",
        json!([]),
    );
    browser.wait_for("a few events", "window.log.events.length >= 5");
    let run = browser.js("return window.log.runs[0][0];", json!([]));

    proxy.retarget(second.addr);
    first.terminate();
    wait_state(&browser, "open");
    let states = browser.js(
        "return window.log.states.filter((s) => s.state === 'reconnecting');",
        json!([]),
    );
    assert_eq!(
        states,
        json!([{ "state": "reconnecting", "reason": "server_restart", "message": "the server is restarting",
                 "delay": 0, "code": 1012, "session": null }]),
        "one immediate retry, which the other server answered"
    );
    let resync = browser.js("return window.log.resyncs;", json!([]));
    assert_eq!(resync[0]["reason"], "server_restart");
    assert_eq!(resync[0]["interrupted"], json!([run]));
    let status = browser.js("return window.c.run(arguments[0]).status;", json!([run]));
    assert_eq!(status, "interrupted");
    browser.screenshot("on the second server");
}

#[test]
fn a_reload_resumes_exactly_where_the_tab_was() {
    let browser = Browser::open("client-reload");
    let server = DemoServer::start(&[]);
    let options = json!({ "user": "rita", "storageKey": "position" });
    start_client_with(&browser, &server.url("/"), options.clone());
    browser.js(
        "window.c.startAgent('count', { context: { synthetic: { events: 100, interval_ms: 30 } } });",
        json!([]),
    );
    browser.wait_for("20 events", "window.log.events.length >= 20");
    browser.reload();
    let saved = browser.js(
        "return JSON.parse(sessionStorage.getItem('position'));",
        json!([]),
    );
    let at = saved["seq"].as_u64().expect("a saved position");
    assert!(at >= 20, "{saved}");
    assert_eq!(saved["user"], "rita");
    assert!(
        saved.get("token").is_none(),
        "no token kept without persistToken"
    );

    start_on_this_page(&browser, options);
    browser.wait_for(
        "the run to finish",
        "window.log.runs.some((r) => r[1] === 'completed')",
    );
    browser.screenshot("resumed after the reload");
    let log = browser.js("return window.log;", json!([]));
    let events: Vec<u64> = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(
        events,
        (at + 1..=100).collect::<Vec<_>>(),
        "the new page gets exactly the events after the saved position"
    );
    assert_eq!(log["resumed"]["fromSeq"], at + 1);
    assert_eq!(log["resyncs"], json!([]));
}

#[test]
fn the_token_is_refreshed_before_it_expires_without_a_visible_reconnect() {
    let browser = Browser::open("client-token-refresh");
    let server = DemoServer::start(&[]);
    // The first token expires in 8 s: without a refresh the server would close with 4002.
    start_client_with(
        &browser,
        &server.url("/"),
        json!({ "user": "tina", "tokens": [token("tina", 8), token("tina", 3600)] }),
    );
    let first_session = browser.js("return window.c.sessionId;", json!([]));
    browser.js(
        "window.c.startAgent('through the refresh', { context: { synthetic: { events: 250, interval_ms: 40 } } });",
        json!([]),
    );
    browser.wait_for(
        "the run to finish",
        "window.log.runs.some((r) => r[1] === 'completed')",
    );
    browser.screenshot("after the refresh");
    let log = browser.js("return window.log;", json!([]));
    assert_eq!(log["tokenCalls"], json!(["initial", "refresh"]));
    let states: Vec<(String, String)> = log["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or_default().to_owned(),
                s["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("connecting", "initial"),
        ("open", "connected"),
        ("connecting", "token_refresh"),
        ("open", "connected"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(states, expected, "no reconnecting, no 4002");
    assert_ne!(
        browser.js("return window.c.sessionId;", json!([])),
        first_session
    );
    let events: Vec<u64> = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(events, (1..=250).collect::<Vec<_>>(), "every event once");
}

#[test]
fn duplicated_and_stale_deliveries_reach_the_app_exactly_once_in_order() {
    let browser = Browser::open("client-dedupe");
    let server = DemoServer::start(&[]);
    start_client(&browser, &server.url("/"), "dedo", true);
    browser.js(
        "window.c.startAgent('twice', { context: { synthetic: { events: 60, interval_ms: 5 } } });",
        json!([]),
    );
    browser.wait_for(
        "the run to finish",
        "window.log.runs.some((r) => r[1] === 'completed')",
    );
    browser.screenshot("run completed");
    let events = browser.js("return window.log.events;", json!([]));
    assert_eq!(events, json!((1..=60).collect::<Vec<u64>>()));
    let frames = browser.js("return window.log.states.length;", json!([]));
    assert_eq!(frames, json!(2), "connecting, open: nothing else happened");
}

#[test]
fn the_declared_types_match_what_the_module_exports() {
    let browser = Browser::open("client-types");
    let server = DemoServer::start(&[]);
    let types = ureq::get(server.url("/agentwire.d.ts"))
        .call()
        .expect("the types are served")
        .body_mut()
        .read_to_string()
        .expect("text");
    let class = types
        .split("export declare class AgentwireClient {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("the class declaration");
    let mut methods = Vec::new();
    let mut properties = Vec::new();
    for line in class.lines().map(str::trim) {
        let name: String = line
            .trim_start_matches("readonly ")
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || name == "constructor" || line.starts_with("static") {
            continue;
        }
        let rest = &line.trim_start_matches("readonly ")[name.len()..];
        if rest.starts_with('(') || rest.starts_with('<') {
            methods.push(name);
        } else if rest.starts_with(':') {
            properties.push(name);
        }
    }
    assert!(
        methods.len() >= 12 && properties.len() >= 20,
        "{methods:?} {properties:?}"
    );
    let events: Vec<String> = types
        .split("export interface ClientEventMap {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("the event map")
        .lines()
        .filter_map(|l| l.trim().split(':').next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();

    browser.goto(&server.url("/"));
    let missing = browser.js_async(
        "const [methods, properties, events, done] = arguments;
         import('/agentwire.js').then((m) => {
           const c = new m.AgentwireClient({ url: '/ws', storage: null });
           done({
             methods: methods.filter((n) => typeof c[n] !== 'function'),
             properties: properties.filter((n) => !(n in c)),
             events: JSON.stringify(events) === JSON.stringify(m.CLIENT_EVENTS) ? [] : m.CLIENT_EVENTS,
             statics: m.AgentwireClient.EVENT_TYPES === m.EVENT_TYPES && m.default === m.AgentwireClient,
           });
         });",
        json!([methods, properties, events]),
    );
    assert_eq!(
        missing,
        json!({ "methods": [], "properties": [], "events": [], "statics": true }),
        "agentwire.d.ts declares what agentwire.js has"
    );
}

/// A demo token for `user` that expires in `secs` seconds, signed like the server's own.
fn token(user: &str, secs: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("a token")
}
