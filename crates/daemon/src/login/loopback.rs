//! The callback of `login --loopback`: a listener on the loopback interface that the browser
//! comes back to with the code.

use std::time::Duration;

use tokend_core::login::{Pkce, authorize_url};
use tokend_core::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{printable, show_url};
use crate::cli::{LoginArgs, Settings};
use crate::exit;

/// How long the loopback flow waits for the browser to come back.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The loopback flow: serve `/callback` on 127.0.0.1, send the browser there, and wait for the
/// code. Returns the redirect URI used (it must be repeated in the exchange) and the code.
pub(super) async fn loopback_code(
    settings: &Settings,
    args: &LoginArgs,
    pkce: &Pkce,
    client_id: &str,
    scope: &str,
) -> Result<(String, Secret), u8> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
        eprintln!("claude-tokend: cannot listen on 127.0.0.1 for the callback: {e}");
        exit::FAILURE
    })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let redirect_uri = format!("http://localhost:{port}/callback");
    let url = authorize_url(
        &settings.authorize_url,
        client_id,
        &redirect_uri,
        scope,
        pkce,
    );
    show_url(&url, args.no_browser);
    eprintln!("Waiting for the browser to come back to {redirect_uri} …");
    let wait = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if let Some(code) = answer_callback(stream, &pkce.state).await {
                return code;
            }
        }
    };
    match tokio::time::timeout(LOOPBACK_TIMEOUT, wait).await {
        Ok(Ok(code)) => Ok((redirect_uri, code)),
        Ok(Err(message)) => {
            eprintln!("claude-tokend: {message}");
            Err(exit::FAILURE)
        }
        Err(_) => {
            eprintln!(
                "claude-tokend: no answer on {redirect_uri} within 5 minutes. If the browser runs on \
                 another machine, use the paste flow: `claude-tokend login` without --loopback"
            );
            Err(exit::FAILURE)
        }
    }
}

/// Answers one request on the callback listener. `Some(Ok(code))` ends the wait with a code,
/// `Some(Err(..))` ends it with the provider's refusal; `None` (a stray request, a wrong state)
/// keeps waiting.
async fn answer_callback(
    mut stream: tokio::net::TcpStream,
    state: &str,
) -> Option<Result<Secret, String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // A request head is small; anything bigger, or slower than a few seconds, is not a browser.
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return None;
    }
    let text = String::from_utf8_lossy(&head);
    let target = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let url = tokend_core::settings::Url::parse(&format!("http://localhost{target}")).ok();
    let Some(url) = url.filter(|u| u.path() == "/callback") else {
        respond(&mut stream, "404 Not Found", "Not found.").await;
        return None;
    };
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    // The state first: any local process can reach this port, and only a callback that carries
    // this login's state comes from the sign-in page we opened. Anything else, an error included,
    // is ignored and the login keeps waiting.
    if param("state").as_deref() != Some(state) {
        respond(
            &mut stream,
            "400 Bad Request",
            "This sign-in link belongs to another login attempt; it was ignored.",
        )
        .await;
        tracing::warn!(
            "ignored a callback whose state does not match this login (another login attempt, \
             or another program); still waiting"
        );
        return None;
    }
    if let Some(error) = param("error") {
        respond(
            &mut stream,
            "200 OK",
            "Sign-in was not completed. You may close this window.",
        )
        .await;
        let detail = param("error_description").unwrap_or_default();
        return Some(Err(format!(
            "the sign-in page reported `{}` {}; nothing was saved",
            printable(&error),
            printable(&detail)
        )));
    }
    match param("code").filter(|c| !c.trim().is_empty()) {
        Some(code) => {
            respond(
                &mut stream,
                "200 OK",
                "Signed in to claude-tokend. You may close this window.",
            )
            .await;
            Some(Ok(Secret::new(code)))
        }
        None => {
            respond(
                &mut stream,
                "400 Bad Request",
                "The callback carried no code.",
            )
            .await;
            None
        }
    }
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>claude-tokend</title><p>{message}</p>\n"
    );
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
