//! A real browser for the browser tests: Debian's headless Chromium, driven through
//! chromedriver over the WebDriver protocol (plain JSON over HTTP, with `ureq`).
//!
//! Each test binary starts one chromedriver, the first time a test asks for a browser, and
//! it dies with the binary. Each test gets its own Chromium (a fresh profile), and the tests
//! of a binary take turns, so the CI's two cores never run two browsers at once. Every step
//! a test names is saved as a screenshot under `target/browser-screenshots/<test>/`.
//! `servers` starts the demo server as a separate process, and a TCP proxy that can cut
//! connections.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod demo_page;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// How long a test waits for something a user would see at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The element reference key of the WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One chromedriver per test binary: its base URL.
fn chromedriver() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread that lives as long as the process: chromedriver is told to die with it.
        std::thread::spawn(move || {
            let started = start_chromedriver();
            let url = started
                .as_ref()
                .map(|(_, url)| url.clone())
                .map_err(Clone::clone);
            tx.send(url).expect("the test waits for chromedriver");
            let _child = started.ok();
            loop {
                std::thread::park();
            }
        });
        match rx.recv().expect("chromedriver thread") {
            Ok(url) => url,
            Err(message) => panic!("{message}"),
        }
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn start_chromedriver() -> Result<(Child, String), String> {
    let missing = |what: &str| {
        format!(
            "{what} is not installed: the browser tests drive Debian's headless Chromium through \
             chromedriver. Run scripts/test (it installs the `chromium` and `chromium-driver` \
             packages), or `apt-get install chromium chromium-driver`."
        )
    };
    let driver = find_program("chromedriver").ok_or_else(|| missing("chromedriver"))?;
    find_program("chromium").ok_or_else(|| missing("chromium"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for chromedriver: {e}"))?
        .port();
    let mut command = Command::new(driver);
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel for a SIGTERM when the
        // thread that spawned chromedriver (which lives as long as the process) dies.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start chromedriver: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(status) = request("GET", &format!("{url}/status"), None) {
            if status["ready"] == true {
                return Ok((child, url));
            }
        }
        if Instant::now() > deadline {
            return Err("chromedriver did not become ready".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One WebDriver request; the answer's `value`, or an error naming the WebDriver error.
fn request(method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build(),
        )
    });
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(&json!({})).to_string()),
    };
    let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
    let ok = response.status().is_success();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))?;
    if ok {
        Ok(value["value"].clone())
    } else {
        Err(format!("{method} {url}: {}", value["value"]))
    }
}

/// The tests of one binary take turns with the browser.
static TURN: Mutex<()> = Mutex::new(());

/// A Chromium of its own for one test, with a fresh profile; closed when dropped.
pub struct Browser {
    session: String,
    profile: PathBuf,
    shots: PathBuf,
    step: AtomicUsize,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts a browser for the test `name` (screenshots go to a directory of that name).
    pub fn open(name: &str) -> Browser {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .to_owned();
        let shots = target.join("browser-screenshots").join(name);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        let profile =
            std::env::temp_dir().join(format!("agentwire-chromium-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // Tabs in the background keep their timers: the tests open several at once.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find_program("chromium").map(|p| p.display().to_string()),
                "args": args,
            },
        }}});
        let base = chromedriver();
        let created = request("POST", &format!("{base}/session"), Some(&capabilities))
            .unwrap_or_else(|e| panic!("cannot start Chromium through chromedriver: {e}"));
        let session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let browser = Browser {
            session,
            profile,
            shots,
            step: AtomicUsize::new(0),
            _turn: turn,
        };
        browser.command("timeouts", json!({ "script": 60_000, "pageLoad": 60_000 }));
        browser
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}/{path}", chromedriver(), self.session)
    }

    fn command(&self, path: &str, body: Value) -> Value {
        request("POST", &self.url(path), Some(&body)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Navigates this tab (a full load, or a fragment change if only the fragment differs).
    pub fn goto(&self, url: &str) {
        self.command("url", json!({ "url": url }));
    }

    /// Reloads the page, as the browser's reload button does.
    pub fn reload(&self) {
        self.command("refresh", json!({}));
    }

    /// Runs `body` as a function in the page (`arguments` are `args`); returns its result.
    pub fn js(&self, body: &str, args: Value) -> Value {
        self.command("execute/sync", json!({ "script": body, "args": args }))
    }

    /// Runs `body` as an async function (`arguments[arguments.length - 1]` is its callback).
    pub fn js_async(&self, body: &str, args: Value) -> Value {
        self.command("execute/async", json!({ "script": body, "args": args }))
    }

    /// Polls the JavaScript expression `expr` until it is truthy; returns its value. On
    /// timeout, saves a screenshot and fails with `what`.
    pub fn wait_for(&self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let script = format!("return ({expr});");
        loop {
            let value = self.js(&script, json!([]));
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", slug(what)));
                panic!("timed out waiting for {what} (`{expr}` is {value})");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.command("element", json!({ "using": "css selector", "value": css }));
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    /// Clicks the element `css` as a user would (WebDriver element click).
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.command(&format!("element/{id}/click"), json!({}));
    }

    /// Types `text` into the element `css` (a trailing "\u{E007}" presses Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.command(&format!("element/{id}/value"), json!({ "text": text }));
    }

    /// Opens a new tab and switches to it; returns its handle.
    pub fn new_tab(&self) -> String {
        let made = self.command("window/new", json!({ "type": "tab" }));
        let handle = made["handle"].as_str().expect("a window handle").to_owned();
        self.switch_to(&handle);
        handle
    }

    /// The current tab's handle.
    pub fn tab(&self) -> String {
        request("GET", &self.url("window"), None)
            .unwrap_or_else(|e| panic!("{e}"))
            .as_str()
            .expect("a window handle")
            .to_owned()
    }

    pub fn switch_to(&self, handle: &str) {
        self.command("window", json!({ "handle": handle }));
    }

    /// Saves a screenshot of the current tab as the test's next numbered step.
    pub fn screenshot(&self, step: &str) -> PathBuf {
        let n = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let png = request("GET", &self.url("screenshot"), None).unwrap_or_else(|e| panic!("{e}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("valid base64");
        let path = self.shots.join(format!("{n:02}-{}.png", slug(step)));
        std::fs::write(&path, bytes).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            "DELETE",
            &format!("{}/session/{}", chromedriver(), self.session),
            None,
        );
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
