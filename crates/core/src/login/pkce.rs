//! The PKCE pair (verifier, challenge, and a separate random `state`) and the authorize URL
//! that carries them to the browser.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::settings::Url;

/// A PKCE pair and the separate, random `state`. The verifier never leaves this process except
/// in the code exchange's body; the `state` is what travels through the browser.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
    pub state: String,
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(buf)
}

/// base64url(SHA-256(verifier)), the S256 challenge.
pub fn challenge_for(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Pkce {
    pub fn generate() -> Self {
        let verifier = random_b64(32);
        Pkce {
            challenge: challenge_for(&verifier),
            verifier: Secret::new(verifier),
            state: random_b64(32),
        }
    }
}

/// The authorize URL, with `code=true` (the page shows a code to paste back).
pub fn authorize_url(
    endpoint: &Url,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    pkce: &Pkce,
) -> Url {
    let mut url = endpoint.clone();
    url.query_pairs_mut()
        .append_pair("code", "true")
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &pkce.state);
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::DEFAULT_SCOPE;

    #[test]
    fn pkce_matches_rfc7636_and_state_is_separate() {
        // The example from RFC 7636, appendix B.
        assert_eq!(
            challenge_for("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate();
        assert_eq!(
            p.verifier.expose().len(),
            43,
            "32 bytes, base64url without padding"
        );
        assert_eq!(p.challenge, challenge_for(p.verifier.expose()));
        assert_ne!(p.state, p.verifier.expose());
        assert!(!p.verifier.expose().contains('='));
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let p = Pkce::generate();
        let url = authorize_url(
            &Url::parse("https://claude.ai/oauth/authorize").unwrap(),
            "cid",
            "https://platform.claude.com/oauth/code/callback",
            DEFAULT_SCOPE,
            &p,
        );
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            url.query_pairs().next().unwrap(),
            ("code".into(), "true".into())
        );
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["response_type"], "code");
        assert_eq!(
            q["redirect_uri"],
            "https://platform.claude.com/oauth/code/callback"
        );
        assert_eq!(q["scope"], DEFAULT_SCOPE);
        assert_eq!(q["code_challenge"], p.challenge);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], p.state);
        assert!(
            !url.as_str().contains(p.verifier.expose()),
            "the verifier never goes in the URL"
        );
    }
}
