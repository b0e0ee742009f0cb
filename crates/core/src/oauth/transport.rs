//! Sorting transport failures (connect, timeout, TLS certificates) into messages that say what
//! to do, and scrubbing every secret out of text that came from the server or the network
//! before it reaches an error.

use super::{OAuthError, Refusal};
use crate::secret::{Secret, mask};

pub(super) fn transport_error(e: &reqwest::Error, secrets: &[&Secret]) -> OAuthError {
    if let Some(cert) = certificate_error(e) {
        return certificate_refused(cert, &scrub(&error_chain(e), secrets));
    }
    let what = if e.is_timeout() {
        "the token endpoint did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the token endpoint"
    } else {
        "the request to the token endpoint failed"
    };
    let reason = scrub(&format!("{what}: {}", error_chain(e)), secrets);
    if e.is_builder() {
        OAuthError::Misdirected { reason }
    } else {
        OAuthError::Transient {
            reason,
            retry_after: None,
        }
    }
}

/// The TLS certificate problem behind a failed request, if that is what it was. rustls's error
/// sits inside `io::Error`s, whose `source()` skips the error they wrap, so each `io::Error` on
/// the way is opened by hand.
fn certificate_error<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e rustls::CertificateError> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(cert)) = err.downcast_ref::<rustls::Error>() {
            return Some(cert);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// How to make this machine trust a certificate authority, as the verifier in use reads it:
/// reqwest checks certificates with rustls-platform-verifier, which on macOS asks the system's
/// Keychain trust settings and elsewhere reads the system's CA bundle (found the way OpenSSL
/// finds it) or, when set, only `SSL_CERT_FILE` / `SSL_CERT_DIR`.
#[cfg(target_os = "macos")]
pub const CA_HINT: &str = "If your network (a corporate proxy, say) uses its own certificate \
    authority, add that CA to the System keychain and trust it for SSL: in Keychain Access, or \
    with `sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain \
    ca.pem`.";
#[cfg(not(target_os = "macos"))]
pub const CA_HINT: &str = "If your network (a corporate proxy, say) uses its own certificate \
    authority, add that CA to the system's trust store (Debian and Ubuntu: copy it as a .crt \
    file into /usr/local/share/ca-certificates/ and run `sudo update-ca-certificates`; Fedora \
    and RHEL: /etc/pki/ca-trust/source/anchors/ and `sudo update-ca-trust`), or set \
    SSL_CERT_FILE to a PEM file that holds it. SSL_CERT_FILE replaces the system's list, so that \
    file must also hold the usual CAs: the system bundle with yours appended.";

/// A certificate the client refused. Whether waiting can help depends on why: a certificate
/// that is expired or not yet valid may be this machine's clock, still unset early after boot,
/// which fixes itself (transient). Any other refusal (no trusted authority signed it, it names
/// another host) is a setting of this machine or of `--token-url` that must change: retrying
/// cannot help, so it ends the attempt at once (exit 1; the daemon waits for a change). Nothing
/// was sent: the handshake failed before the request.
pub(super) fn certificate_refused(cert: &rustls::CertificateError, detail: &str) -> OAuthError {
    use rustls::CertificateError as C;
    match cert {
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            OAuthError::Transient {
                reason: format!(
                    "the token endpoint's TLS certificate is outside its validity period \
                     ({detail}); check this machine's clock"
                ),
                retry_after: None,
            }
        }
        C::UnknownIssuer => OAuthError::Misdirected {
            reason: format!(
                "the token endpoint's TLS certificate is not trusted: no certificate authority \
                 this machine trusts signed it ({detail}). {CA_HINT}"
            ),
        },
        _ => OAuthError::Misdirected {
            reason: format!(
                "the token endpoint's TLS certificate was refused ({detail}); check --token-url. \
                 {CA_HINT}"
            ),
        },
    }
}

/// The error and its sources on one line: reqwest's own message alone ("error sending request")
/// rarely says what happened.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

pub(super) fn scrub_error(e: OAuthError, secrets: &[&Secret]) -> OAuthError {
    match e {
        OAuthError::Transient {
            reason,
            retry_after,
        } => OAuthError::Transient {
            reason: scrub(&reason, secrets),
            retry_after,
        },
        OAuthError::Permanent { code, refusal } => OAuthError::Permanent {
            code,
            refusal: Box::new(Refusal {
                reason: scrub(&refusal.reason, secrets),
                detail: refusal.detail.as_deref().map(|d| scrub(d, secrets)),
                ..*refusal
            }),
        },
        // A redirect's message names the Location so the user can pass it as --token-url: a
        // long URL is shaped like a token (40 token characters, `/` and `.` among them), so only
        // the secrets we sent are masked in it.
        OAuthError::Misdirected { reason } => OAuthError::Misdirected {
            reason: scrub_sent(&reason, secrets),
        },
    }
}

/// Masks the secrets we sent, wherever they appear in `text`.
fn scrub_sent(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_blank() {
            out = out.replace(s.expose(), &s.masked());
        }
    }
    out
}

/// Masks, in text that came from elsewhere, the secrets we sent and anything else shaped like a
/// token (a run of 40 or more token characters), so a server that echoes a request cannot put a
/// whole token into a log line.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let out = scrub_sent(text, secrets);
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=');
    let mut result = String::with_capacity(out.len());
    let mut run = String::new();
    for c in out.chars().chain(std::iter::once('\0')) {
        if c != '\0' && is_token_char(c) {
            run.push(c);
            continue;
        }
        if run.chars().count() >= 40 {
            result.push_str(&mask(&run));
        } else {
            result.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            result.push(c);
        }
    }
    result
}
