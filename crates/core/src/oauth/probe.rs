//! The clock probe `doctor` makes: one `HEAD /` to the token endpoint's host, unauthenticated
//! and without a body, to read the server's `Date` header. It goes through the same HTTP
//! client as every other request (rustls, no redirects, the configured User-Agent), with a
//! shorter timeout. It carries no secret and reads no answer but the header.

use std::time::{Duration, SystemTime};

use super::{error_chain, http_client};
use crate::settings::Url;

/// How long the probe may take, connection included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probe learned: the server's `Date` and the local clock's reading halfway through
/// the request (the moment the server most likely stamped it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerDate {
    pub server: SystemTime,
    pub local: SystemTime,
}

/// `scheme://host[:port]/` of an endpoint: the host's root, where the probe goes.
pub fn probe_url(endpoint: &Url) -> Url {
    let mut url = endpoint.clone();
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    // An endpoint URL may carry credentials of its own; the probe sends none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// One `HEAD` of [`probe_url`]`(endpoint)`; the `Date` header of whatever status it answers
/// (a redirect or an error page is stamped too). The error says why there is no date.
pub async fn server_date(endpoint: &Url, user_agent: &str) -> Result<ServerDate, String> {
    let url = probe_url(endpoint);
    let http = http_client(user_agent)
        .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e)))?;
    let sent = SystemTime::now();
    let response = http
        .head(url.clone())
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("{url} did not answer within {}s", PROBE_TIMEOUT.as_secs())
            } else {
                format!("HEAD {url} failed: {}", error_chain(&e))
            }
        })?;
    let received = SystemTime::now();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .ok_or_else(|| format!("{url} answered without a Date header"))?;
    let text = date
        .to_str()
        .map_err(|_| format!("{url} answered with a Date header that is not text"))?;
    let server = httpdate::parse_http_date(text).map_err(|_| {
        // A hostile server's header is shown, but not whole.
        let shown: String = text.chars().take(64).collect();
        let more = if text.chars().count() > 64 { "…" } else { "" };
        format!("{url} answered with a Date header that is not a date: {shown:?}{more}")
    })?;
    let half = received.duration_since(sent).unwrap_or_default() / 2;
    Ok(ServerDate {
        server,
        local: sent + half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_goes_to_the_hosts_root_without_credentials() {
        let cases = [
            (
                "https://platform.claude.com/v1/oauth/token",
                "https://platform.claude.com/",
            ),
            (
                "http://127.0.0.1:8080/v1/oauth/token?x=1#f",
                "http://127.0.0.1:8080/",
            ),
            ("https://u:p@[::1]:9/a", "https://[::1]:9/"),
        ];
        for (endpoint, want) in cases {
            let url = Url::parse(endpoint).unwrap();
            assert_eq!(probe_url(&url).as_str(), want, "{endpoint}");
        }
    }
}
