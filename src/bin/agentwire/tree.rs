//! `agentwire tree`: prints the live supervision tree of a running server, fetched from its
//! admin-only `/debug/tree` route, once or (`--watch`) every interval until interrupted.

use std::io::Write;
use std::time::Duration;

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
    loop {
        let tree = fetch(&url, &token)?;
        let mut out = std::io::stdout().lock();
        if args.watch {
            // Clear the screen and go home, like `watch`.
            write!(out, "\x1b[2J\x1b[H")?;
            writeln!(
                out,
                "{url}  (every {} ms; Ctrl-C to stop)\n",
                args.interval_ms
            )?;
        }
        out.write_all(tree.as_bytes())?;
        if !tree.ends_with('\n') {
            writeln!(out)?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms.max(100)));
    }
}

fn fetch(url: &str, token: &str) -> Result<String, Box<dyn std::error::Error>> {
    let response = ureq::get(url)
        .header("Authorization", &format!("Bearer {token}"))
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
