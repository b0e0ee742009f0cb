//! `login --loopback`: the browser comes back to `http://localhost:PORT/callback`, which the
//! program serves on both 127.0.0.1 and [::1] (RFC 8252 §8.3: `localhost` may resolve to either,
//! and another local user must not be able to take the other one), one connection beside the
//! other, so idle connections cannot hold the callback back. A flood of local connections cannot
//! push out a callback that is slow to send (`flood`), nor can another user's flood of busy
//! connections (`other_user`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::*;

mod flood;
#[cfg(target_os = "linux")]
mod other_user;

/// A `login --loopback` waiting for its callback, with the server told which code to accept.
struct Waiting {
    run: LoginRun,
    port: u16,
    redirect: String,
    state: String,
    code: String,
}

fn start_loopback(home: &TempHome, server: &TokenServer) -> Waiting {
    start_loopback_as(home, server, &[], |_| {})
}

/// [`start_loopback`] with more variables, its command adjusted by `adjust`.
fn start_loopback_as(
    home: &TempHome,
    server: &TokenServer,
    vars: &[(&str, &std::path::Path)],
    adjust: impl FnOnce(&mut Command),
) -> Waiting {
    let mut run = start_login_as(home, server, &["--loopback"], vars, adjust);
    let (url, q) = run.url();
    let redirect = q["redirect_uri"].clone();
    // The contract: the redirect URI names a loopback host; `localhost`, as Claude Code's.
    assert!(
        redirect.starts_with("http://localhost:") && redirect.ends_with("/callback"),
        "{url}"
    );
    let port: u16 = redirect
        .trim_start_matches("http://localhost:")
        .trim_end_matches("/callback")
        .parse()
        .unwrap();
    let code = format!("code-{}", random_alnum(24));
    server.allow_code(AuthCode {
        code: code.clone(),
        challenge: q["code_challenge"].clone(),
        state: q["state"].clone(),
        redirect_uri: redirect.clone(),
        client_id: CLIENT_ID.to_owned(),
    });
    Waiting {
        run,
        port,
        redirect,
        state: q["state"].clone(),
        code,
    }
}

/// One GET to the callback listener at `addr`, bounded: a listener that does not answer within
/// 3 s fails the request (the old one-at-a-time server took 5 s per idle connection).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let bound = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, bound)?;
    s.set_read_timeout(Some(bound))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        addr.port()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

fn v4(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn v6(port: u16) -> SocketAddr {
    (Ipv6Addr::LOCALHOST, port).into()
}

#[test]
fn loopback_login_receives_the_code_on_the_callback() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut w = start_loopback(&home, &server);
    let get = |path: &str| get(v4(w.port), path).expect("the callback listener answers");
    assert!(
        get("/favicon.ico").starts_with("HTTP/1.1 404"),
        "only /callback is served"
    );
    assert!(
        get("/callback?code=x&state=wrong").starts_with("HTTP/1.1 400"),
        "a wrong state is refused and ignored"
    );
    let reply = get(&format!("/callback?code={}&state={}", w.code, w.state));
    if !reply.starts_with("HTTP/1.1 200") {
        w.run.kill();
        panic!("{reply}");
    }
    assert!(reply.contains("close this window"), "{reply}");
    // The exchange is still to come: the page does not say the sign-in is done.
    assert!(
        reply.contains("terminal") && !reply.contains("Signed in"),
        "{reply}"
    );
    let out = w.run.finish();
    out.expect_code(0);
    out.check_eq("one exchange", server.count(), 1);
    out.check_eq(
        "redirect_uri repeated in the exchange",
        server.requests()[0].body["redirect_uri"].as_str(),
        Some(w.redirect.as_str()),
    );
    out.check_eq(
        "saved",
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
    );
}

#[test]
fn idle_connections_do_not_hold_the_callback_back() {
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut w = start_loopback(&home, &server);
    // Twenty local connections that never send a byte, all made before the browser's: served
    // one at a time, with 5 s each, they would hold the callback back for 100 s.
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(v4(w.port)).expect("an idle connection"))
        .collect();
    let started = Instant::now();
    let reply = get(
        v4(w.port),
        &format!("/callback?code={}&state={}", w.code, w.state),
    );
    let took = started.elapsed();
    match &reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") && took < Duration::from_secs(2) => {}
        _ => {
            w.run.kill();
            panic!(
                "the callback was not answered promptly beside 20 idle connections ({took:?}): {reply:?}"
            );
        }
    }
    // The idle connections, still open, do not keep the login from finishing either.
    let started = Instant::now();
    let out = w.run.finish();
    out.expect_code(0);
    out.check(
        started.elapsed() < Duration::from_secs(4),
        format!("finished promptly ({:?})", started.elapsed()),
    );
    out.check_eq("one exchange", server.count(), 1);
    drop(idle);
}

#[test]
fn a_callback_to_the_ipv6_loopback_is_received() {
    // A machine without IPv6 has no [::1] to listen on (the program then listens on 127.0.0.1
    // alone, as nothing else can take [::1] either).
    if let Err(e) = std::net::TcpListener::bind(v6(0)) {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1]: {e})");
        return;
    }
    let home = TempHome::new();
    let server = TokenServer::start();
    let mut w = start_loopback(&home, &server);
    // The browser may resolve `localhost` to ::1 first: the same port answers there.
    let reply = get(
        v6(w.port),
        &format!("/callback?code={}&state={}", w.code, w.state),
    );
    match &reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
        _ => {
            w.run.kill();
            panic!("no answer on [::1]:{}: {reply:?}", w.port);
        }
    }
    let out = w.run.finish();
    out.expect_code(0);
    out.check_eq(
        "saved",
        home.read_creds()["claudeAiOauth"]["accessToken"].as_str(),
        Some(server.last_issued().access.as_str()),
    );
}
