//! `agentwire tree`: prints the live supervision tree of a running server, fetched from its
//! admin-only `/debug/tree` route, once or (`--watch`) every interval until interrupted.
//!
//! Once, a failed fetch is an error (exit status 1). Watching, it is not: the server may be
//! restarting, or its admin token may be about to be fixed. Every refresh prints its time,
//! and after a failure the screen shows what failed, when the last fetch succeeded, and the
//! tree as it was then; the next refresh tries again.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::cli::TreeArgs;

pub fn run(args: TreeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let url = format!(
        "{}/debug/tree?format={}",
        args.url.trim_end_matches('/'),
        args.format.as_str()
    );
    let token = args
        .admin_token
        .ok_or("an admin token is needed: pass --admin-token or set AGENTWIRE_ADMIN_TOKEN")?;
    if !args.watch {
        let tree = fetch(&url, &token)?;
        let mut out = std::io::stdout().lock();
        write_tree(&mut out, &tree)?;
        out.flush()?;
        return Ok(());
    }
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut last_good: Option<(SystemTime, String)> = None;
    loop {
        let at = SystemTime::now();
        let result = fetch(&url, &token);
        let mut out = std::io::stdout().lock();
        // Clear the screen and go home, like `watch`.
        write!(out, "\x1b[2J\x1b[H")?;
        writeln!(
            out,
            "{url}  (every {} ms; Ctrl-C to stop)",
            interval.as_millis()
        )?;
        match result {
            Ok(tree) => {
                writeln!(out, "{}  ok\n", timestamp(at))?;
                write_tree(&mut out, &tree)?;
                last_good = Some((at, tree));
            }
            Err(error) => {
                writeln!(out, "{}  fetch failed: {error}", timestamp(at))?;
                match &last_good {
                    Some((when, tree)) => {
                        let ago = at.duration_since(*when).unwrap_or_default().as_secs();
                        writeln!(
                            out,
                            "last success: {} ({ago} s ago); the tree then:\n",
                            timestamp(*when)
                        )?;
                        write_tree(&mut out, tree)?;
                    }
                    None => writeln!(out, "last success: none yet")?,
                }
            }
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(interval);
    }
}

fn write_tree(out: &mut impl Write, tree: &str) -> std::io::Result<()> {
    out.write_all(tree.as_bytes())?;
    if !tree.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// RFC 3339, UTC, to the second.
fn timestamp(at: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(at)
}

/// How long one fetch may take: a server that accepts but never answers (stopped, or
/// overloaded) is then a failed fetch, not a hang.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn fetch(url: &str, token: &str) -> Result<String, Box<dyn std::error::Error>> {
    let response = ureq::get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .config()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .call();
    match response {
        Ok(mut response) => Ok(response.body_mut().read_to_string()?),
        Err(ureq::Error::StatusCode(401)) => Err("the server refused the admin token".into()),
        Err(ureq::Error::StatusCode(404)) => {
            Err("no /debug/tree on that server (are the debug routes mounted?)".into())
        }
        Err(error) => Err(format!("cannot fetch {url}: {error}").into()),
    }
}
