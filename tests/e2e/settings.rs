//! Settings from the environment and their bounds: a bad value from a variable is reported under
//! the variable's name, an empty `CLAUDE_TOKEND_*` variable counts as unset, and every duration
//! has an allowed range, so no value, however absurd, crashes the program (exit 2 instead).

use claude_tokend_e2e::*;

/// A HOME with a due login and a server that would accept it: any request shows.
fn setup() -> (TempHome, Login, TokenServer) {
    let home = TempHome::new();
    let login = Login::due();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    (home, login, server)
}

/// The environment variables `--help` says the program reads, so a setting added later is
/// covered by the tests below without editing them.
fn documented_variables() -> Vec<String> {
    let out = Cmd::bare().arg("--help").run();
    out.expect_code(0);
    let text = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: Vec<String> = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(name, _)| name.to_owned()))
        .collect();
    for known in [
        "CLAUDE_TOKEND_CREDENTIALS",
        "CLAUDE_TOKEND_TOKEN_URL",
        "CLAUDE_TOKEND_REFRESH_BEFORE",
        "CLAUDE_TOKEND_RETRY_BUDGET",
        "CLAUDE_TOKEND_USER_AGENT",
        "ANTHROPIC_CLIENT_ID",
    ] {
        out.check(
            names.iter().any(|n| n == known),
            format!("--help should name {known}; found {names:?}"),
        );
    }
    names
}

#[test]
fn a_bad_value_from_the_environment_is_reported_under_the_variable() {
    let cases = [
        ("CLAUDE_TOKEND_REFRESH_BEFORE", "banana", "--refresh-before"),
        ("CLAUDE_TOKEND_RETRY_BUDGET", "3", "--retry-budget"),
        (
            "CLAUDE_TOKEND_TOKEN_URL",
            "http://example.com/token",
            "--token-url",
        ),
        ("CLAUDE_TOKEND_USER_AGENT", "   ", "--user-agent"),
        ("ANTHROPIC_CLIENT_ID", " ", "--client-id"),
    ];
    for (var, value, flag) in cases {
        let (home, login, server) = setup();
        let before = home.state();
        // The variable is set after the server's URL, so a bad CLAUDE_TOKEND_TOKEN_URL replaces it.
        let out = Cmd::new(&home)
            .server(&server)
            .env(var, value)
            .arg("--once")
            .run();
        out.expect_code(2)
            .expect_stderr_contains(&format!("invalid value '{value}' for {var}"))
            .check(
                !out.stderr.contains(&format!("'{flag}")),
                format!("the error should name {var}, not {flag}"),
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before)
            .expect_no_secret(&login.secrets());
    }
}

/// The flag wins over the variable, as it does for a good value: a bad variable it overrides is
/// never used, so it is not an error.
#[test]
fn a_flag_overrides_a_bad_variable() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .env("CLAUDE_TOKEND_REFRESH_BEFORE", "banana")
        .args(["status", "--refresh-before", "15m"])
        .run();
    out.expect_code(0);
}

#[test]
fn empty_variables_count_as_unset() {
    let names = documented_variables();
    // One at a time, so a failure names the variable; `status` sends nothing whatever the URLs.
    for name in &names {
        let home = TempHome::new();
        home.write_creds(&Login::fresh().doc());
        let out = Cmd::new(&home).env(name, "").arg("status").run();
        out.check_eq(format!("exit code with {name}= (empty)"), out.code, 0);
    }
    // All at once, on a refresh: the request carries the defaults (client id, User-Agent), and
    // the default lead (15 minutes) finds the login due.
    let (home, _login, server) = setup();
    let mut cmd = Cmd::new(&home);
    for name in &names {
        cmd = cmd.env(name, "");
    }
    let out = cmd.args(["--once", "--token-url", &server.url()]).run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
    let req = &server.requests()[0];
    out.check_eq(
        "client_id",
        req.body["client_id"].as_str(),
        Some(DEFAULT_CLIENT_ID),
    )
    .check_eq(
        "User-Agent",
        req.header("user-agent").map(str::to_owned),
        Some(default_user_agent()),
    );
}

/// A lead over 4 hours is refused, by flag and by variable (named), with the allowed range; 4
/// hours itself is accepted.
#[test]
fn a_refresh_lead_over_four_hours_is_refused() {
    for (by_flag, value) in [(true, "5h"), (false, "5h"), (true, "4h1s"), (false, "1d")] {
        let (home, login, server) = setup();
        let before = home.state();
        let cmd = Cmd::new(&home).server(&server).arg("--once");
        let cmd = if by_flag {
            cmd.args(["--refresh-before", value])
        } else {
            cmd.env("CLAUDE_TOKEND_REFRESH_BEFORE", value)
        };
        let out = cmd.run();
        out.expect_code(2)
            .expect_stderr_contains("from 0s to 4h")
            .check(
                by_flag || out.stderr.contains("CLAUDE_TOKEND_REFRESH_BEFORE"),
                "the variable is named",
            )
            .check_eq("requests sent", server.count(), 0)
            .expect_untouched(&home.creds_path(), &before)
            .expect_no_secret(&login.secrets());
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let out = Cmd::new(&home)
        .args(["status", "--refresh-before", "4h"])
        .run();
    out.expect_code(0);
}

/// Absurd durations end with a usage error, never a crash (`Instant + Duration` overflowing
/// used to abort `--once` with 134): every duration setting has an allowed range.
#[test]
fn absurd_durations_are_usage_errors_not_crashes() {
    let cases = [
        (
            "--retry-budget",
            "CLAUDE_TOKEND_RETRY_BUDGET",
            "999999999999999d",
            "1d",
        ),
        ("--retry-budget", "CLAUDE_TOKEND_RETRY_BUDGET", "2d", "1d"),
        (
            "--retry-budget",
            "CLAUDE_TOKEND_RETRY_BUDGET",
            "99999999999999999999999s",
            "1d",
        ),
        (
            "--refresh-before",
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            "999999999999999d",
            "4h",
        ),
        (
            "--refresh-before",
            "CLAUDE_TOKEND_REFRESH_BEFORE",
            "18446744073709551615s1s",
            "4h",
        ),
    ];
    for (flag, var, value, max) in cases {
        for command in ["--once", "refresh"] {
            for by_flag in [true, false] {
                let (home, login, server) = setup();
                let before = home.state();
                let cmd = Cmd::new(&home).server(&server).arg(command);
                let cmd = if by_flag {
                    cmd.args([flag, value])
                } else {
                    cmd.env(var, value)
                };
                let out = cmd.run();
                out.expect_code(2)
                    .expect_stderr_contains(&format!("allowed from 0s to {max}"))
                    .check(
                        by_flag || out.stderr.contains(var),
                        format!("the error should name {var}"),
                    )
                    .check_eq("requests sent", server.count(), 0)
                    .expect_untouched(&home.creds_path(), &before)
                    .expect_no_secret(&login.secrets());
            }
        }
    }
    // The largest budget allowed runs normally.
    let (home, _login, server) = setup();
    let out = Cmd::new(&home)
        .server(&server)
        .args(["--once", "--retry-budget", "1d"])
        .run();
    out.expect_code(0)
        .check_eq("requests sent", server.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// A token endpoint behind TLS, with a certificate the system does not trust

/// Linux and the other Unixes: on macOS certificates are checked against the Keychain's trust
/// settings, which `SSL_CERT_FILE` does not change, and the message says so instead.
#[cfg(not(target_os = "macos"))]
mod tls {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;
    use claude_tokend_e2e::*;

    use super::setup;

    // A throwaway certificate authority made for this test only (EC P-256, valid 2000 to 2200), a
    // certificate for 127.0.0.1 signed by it with its key, and an unrelated authority that signed
    // nothing here. They protect nothing.
    const CA_PEM: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBcDCCARWgAwIBAgIUHq33wcjN7QovwSxWe2sP1u9LrfMwCgYIKoZIzj0EAwIw\n\
    JDEiMCAGA1UEAwwZY2xhdWRlLXRva2VuZCBlMmUgdGVzdCBDQTAgFw0wMDAxMDEw\n\
    MDAwMDBaGA8yMjAwMDEwMTAwMDAwMFowJDEiMCAGA1UEAwwZY2xhdWRlLXRva2Vu\n\
    ZCBlMmUgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLmj+XmFAke5\n\
    4wlaB0inkRC3ev5MRo/iKiRwwsG8TscO3rcIyAmnwtUBmmlzDM/hBKIfqlBuKmz6\n\
    p8O6EeviEpejIzAhMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoG\n\
    CCqGSM49BAMCA0kAMEYCIQC0L+oNQ9wiGEsh1rGxiawdhxpc8ZRhLl7tBTtbe+0V\n\
    IQIhAIfeGsHo47u+HGbmk7Rj9ZaBgX9OLFpzKgafVlyVzXwF\n\
    -----END CERTIFICATE-----\n\
    ";
    const UNRELATED_CA_PEM: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBeDCCAR+gAwIBAgIUCRhpX7DRLo0sPexChCFbj4qRX5IwCgYIKoZIzj0EAwIw\n\
    KTEnMCUGA1UEAwweY2xhdWRlLXRva2VuZCBlMmUgdW5yZWxhdGVkIENBMCAXDTAw\n\
    MDEwMTAwMDAwMFoYDzIyMDAwMTAxMDAwMDAwWjApMScwJQYDVQQDDB5jbGF1ZGUt\n\
    dG9rZW5kIGUyZSB1bnJlbGF0ZWQgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n\
    AATHlJvxWm96ZL0CGhdnaYHKqvIJsLK6hqbIsP3pXDd0ulTALGeeFn6W2wqMLyQq\n\
    5K2OBplpax/cFiPJ12e/WJaboyMwITAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB\n\
    /wQEAwIBBjAKBggqhkjOPQQDAgNHADBEAiB3OOaqp8/WzjBKV5J1axnaraVlI7hN\n\
    mVg0Yi2GI+2FdQIgJ1D6dPxI7bUv4g7vKybVTcJUTzWrRjXOKWvMtlnuLc0=\n\
    -----END CERTIFICATE-----\n\
    ";
    const LEAF_PEM: &str = "\
    -----BEGIN CERTIFICATE-----\n\
    MIIBfTCCASOgAwIBAgIUKF5FbLLxqRaBP0VQQfqQTl1aqqMwCgYIKoZIzj0EAwIw\n\
    JDEiMCAGA1UEAwwZY2xhdWRlLXRva2VuZCBlMmUgdGVzdCBDQTAgFw0wMDAxMDEw\n\
    MDAwMDBaGA8yMjAwMDEwMTAwMDAwMFowFDESMBAGA1UEAwwJMTI3LjAuMC4xMFkw\n\
    EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfLBzow/z97v8U8c+gf6HdxZoOuRGTqET\n\
    47kK62wxGabHB2MMKT8hHk0TTw3SlMB2PEa8hTks7oVT6Pa0TyXFKaNBMD8wGgYD\n\
    VR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwEwYDVR0lBAww\n\
    CgYIKwYBBQUHAwEwCgYIKoZIzj0EAwIDSAAwRQIhALFFMa4uG6Tcb5MTS0QcUTbB\n\
    aFlN4QVqu70MECc84i9PAiBk1Sqd+qGYmbZQmm1XRCrK0SIVpAeCJdNuMWajCTeV\n\
    GQ==\n\
    -----END CERTIFICATE-----\n\
    ";
    const LEAF_KEY_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBbB4q7SSOevPjbuSFH0JoZz+N1MHMLbQ7pFA0VX8ca6hRANCAAR8sHOjD/P3u/xTxz6B/od3Fmg65EZOoRPjuQrrbDEZpscHYwwpPyEeTRNPDdKUwHY8RryFOSzuhVPo9rRPJcUp";

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("a PEM certificate")
    }

    /// A TLS front on 127.0.0.1 that presents the test certificate and passes each request on to
    /// `backend` (the suite's plain-HTTP token endpoint). Counts the connections it accepts, so a
    /// client that retries shows.
    struct TlsFront {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
    }

    impl TlsFront {
        fn start(backend: SocketAddr) -> TlsFront {
            use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let key = base64::engine::general_purpose::STANDARD
                .decode(LEAF_KEY_PKCS8_B64)
                .expect("the test key");
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![
                        CertificateDer::from(pem_der(LEAF_PEM)),
                        CertificateDer::from(pem_der(CA_PEM)),
                    ],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                )
                .expect("the test certificate and key");
            let config = Arc::new(config);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
            let addr = listener.local_addr().expect("its address");
            let connections = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&connections);
            // The thread lives as long as the test process; every test has its own front.
            std::thread::spawn(move || {
                for tcp in listener.incoming().flatten() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let config = Arc::clone(&config);
                    std::thread::spawn(move || {
                        let _ = relay(config, tcp, backend);
                    });
                }
            });
            TlsFront { addr, connections }
        }

        fn url(&self) -> String {
            format!("https://127.0.0.1:{}{TOKEN_PATH}", self.addr.port())
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    /// One request: read it whole through TLS, send it to the backend (which answers and closes),
    /// and pass the answer back.
    fn relay(
        config: Arc<rustls::ServerConfig>,
        tcp: TcpStream,
        backend: SocketAddr,
    ) -> std::io::Result<()> {
        let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tls.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&chunk[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let mut upstream = TcpStream::connect(backend)?;
        upstream.write_all(&request)?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer)?;
        tls.write_all(&answer)?;
        tls.conn.send_close_notify();
        tls.flush()
    }

    fn write_pem(path: &Path, pem: &str) {
        std::fs::write(path, pem).expect("write the CA file");
    }

    /// An endpoint whose certificate no trusted authority signed: the message says it is the
    /// certificate and how to trust a corporate CA, and the run exits 1 at once (a setting of this
    /// machine must change; retrying cannot help and only delays the answer). Nothing is sent.
    /// `SSL_CERT_FILE` names an unrelated authority, so the test does not depend on the machine's
    /// own trust store.
    #[test]
    fn an_untrusted_certificate_is_reported_as_such_with_the_ca_hint() {
        for command in ["--once", "refresh"] {
            let (home, login, server) = setup();
            let front = TlsFront::start(server.addr());
            let bundle = home.path().join("unrelated-ca.pem");
            write_pem(&bundle, UNRELATED_CA_PEM);
            let before = home.state();
            let out = Cmd::new(&home)
                .env("SSL_CERT_FILE", &bundle)
                .args([command, "--token-url", &front.url(), "--retry-budget", "5s"])
                .run();
            out.expect_code(1)
                .expect_stderr_contains("certificate")
                .expect_stderr_contains("not trusted")
                .expect_stderr_contains("SSL_CERT_FILE")
                .expect_stderr_contains("update-ca-certificates")
                .check(
                    !out.stderr.contains("cannot connect"),
                    "it is the certificate, not the connection",
                )
                .check_eq("TLS connections (no retries)", front.connections(), 1)
                .check_eq("requests that reached the endpoint", server.count(), 0)
                .expect_untouched(&home.creds_path(), &before)
                .expect_no_secret(&login.secrets());
        }
    }

    /// The hint works: with `SSL_CERT_FILE` naming the authority that signed the endpoint's
    /// certificate, the same refresh goes through.
    #[test]
    fn ssl_cert_file_naming_the_ca_makes_the_endpoint_trusted() {
        let (home, _login, server) = setup();
        let front = TlsFront::start(server.addr());
        let bundle = home.path().join("corporate-ca.pem");
        write_pem(&bundle, CA_PEM);
        let out = Cmd::new(&home)
            .env("SSL_CERT_FILE", &bundle)
            .args(["--once", "--token-url", &front.url()])
            .run();
        out.expect_code(0)
            .check_eq("requests that reached the endpoint", server.count(), 1);
    }
}

/// A duration written almost right is refused with what is wrong and how to write it, not as
/// "has no unit": a fraction (`1.5h`: write `90m`), a space between number and unit (`90 s`),
/// a comma, a minus sign. Flag and variable alike, before anything is read or sent.
#[test]
fn a_nearly_right_duration_says_what_is_wrong() {
    let cases = [
        ("1.5h", &["fraction", "90m"][..]),
        ("0.5m", &["fraction", "30s"][..]),
        ("2.25h", &["fraction", "135m"][..]),
        ("1.5s", &["fraction", "1500ms"][..]),
        ("90 s", &["space", "90s"][..]),
        ("1h 30m", &["space", "1h30m"][..]),
        ("1,5h", &["`,`"][..]),
        ("-3m", &["negative"][..]),
        ("15", &["has no unit", "15m"][..]),
    ];
    for (value, wanted) in cases {
        for by_flag in [true, false] {
            let (home, _login, server) = setup();
            let before = home.state();
            let cmd = Cmd::new(&home).server(&server).arg("--once");
            let cmd = if by_flag {
                // `=`: clap would take a leading `-` for a flag of its own.
                cmd.arg(format!("--refresh-before={value}"))
            } else {
                cmd.env("CLAUDE_TOKEND_REFRESH_BEFORE", value)
            };
            let out = cmd.run();
            out.expect_code(2)
                .check_eq("requests", server.count(), 0)
                .expect_untouched(&home.creds_path(), &before);
            for want in wanted {
                out.expect_stderr_contains(want);
            }
            out.check(
                !out.stderr.contains("has no unit") || value == "15",
                "the message says what is wrong, not that a unit is missing",
            );
        }
    }
}
