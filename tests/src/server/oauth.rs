//! The token server's default behaviour when no reply is scripted: a realistic OAuth token
//! endpoint. Refresh tokens are single-use and rotated on success; authorization codes are
//! exchanged once, checked against their PKCE challenge, redirect_uri, client_id and state.
//! Never touches the wire (see `http`).

use serde_json::{Map, Value, json};

use super::{GrantPolicy, Issued, Reply, Request, Shared, TOKEN_PATH, lock};
use crate::home::{fake_access, fake_refresh};

/// The code exchange, checked as a real server would: the code is known and unused, the
/// verifier hashes to the challenge, and redirect_uri, client_id and state match.
fn exchange_reply(shared: &Shared, req: &Request) -> Reply {
    use base64::Engine;
    use sha2::Digest;
    let field = |k: &str| req.body.get(k).and_then(Value::as_str).unwrap_or_default();
    let refuse = |why: &str| {
        Reply::json(
            400,
            &json!({"error": "invalid_grant", "error_description": why}),
        )
    };
    let mut codes = lock(&shared.codes);
    let Some(i) = codes.iter().position(|c| c.code == field("code")) else {
        return refuse("unknown or used authorization code");
    };
    let want = codes[i].clone();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(field("code_verifier").as_bytes()));
    if challenge != want.challenge {
        return refuse("code_verifier does not match the code_challenge");
    }
    if field("redirect_uri") != want.redirect_uri {
        return refuse("redirect_uri does not match");
    }
    if field("client_id") != want.client_id {
        return refuse("client_id does not match");
    }
    if field("state") != want.state {
        return refuse("state does not match");
    }
    codes.remove(i);
    drop(codes);
    let policy = lock(&shared.policy).clone();
    let access = fake_access();
    let refresh = policy.rotate.then(fake_refresh);
    if let Some(r) = &refresh {
        lock(&shared.valid).push(r.clone());
    }
    // The server grants the lifetime asked for, if any, else its policy's.
    let expires_in = req
        .body
        .get("expires_in")
        .and_then(Value::as_u64)
        .or(policy.expires_in);
    grant_reply(shared, &policy, access, refresh, expires_in)
}

/// A successful token answer as the policy shapes it; the pair is recorded as issued.
fn grant_reply(
    shared: &Shared,
    policy: &GrantPolicy,
    access: String,
    refresh: Option<String>,
    expires_in: Option<u64>,
) -> Reply {
    let mut body = Map::new();
    body.insert("token_type".into(), "Bearer".into());
    body.insert("access_token".into(), access.clone().into());
    if let Some(n) = expires_in {
        body.insert("expires_in".into(), n.into());
    }
    if let Some(r) = &refresh {
        body.insert("refresh_token".into(), r.clone().into());
    }
    if let Some(n) = policy.refresh_token_expires_in {
        body.insert("refresh_token_expires_in".into(), n.into());
    }
    if let Some(s) = &policy.scope {
        body.insert("scope".into(), s.clone().into());
    }
    body.insert(
        "account".into(),
        json!({"uuid": "00000000-0000-4000-8000-000000000000", "email_address": "user@example.test"}),
    );
    lock(&shared.issued).push(Issued { access, refresh });
    Reply::json(200, &Value::Object(body))
}

/// The realistic endpoint: single-use refresh tokens, rotated on every success.
pub(super) fn oauth_reply(shared: &Shared, req: &Request) -> Reply {
    if req.method != "POST" || req.path != TOKEN_PATH {
        return Reply::json(
            404,
            &json!({"error": "not_found", "error_description": "no such endpoint"}),
        );
    }
    if req.body.get("grant_type").and_then(Value::as_str) == Some("authorization_code") {
        return exchange_reply(shared, req);
    }
    if req.body.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
        return Reply::json(400, &json!({"error": "unsupported_grant_type"}));
    }
    let Some(presented) = req.refresh_token() else {
        return Reply::json(
            400,
            &json!({"error": "invalid_request", "error_description": "refresh_token is required"}),
        );
    };
    let mut valid = lock(&shared.valid);
    let Some(i) = valid.iter().position(|v| v == presented) else {
        return Reply::invalid_grant();
    };
    let policy = lock(&shared.policy).clone();
    let access = fake_access();
    let refresh = policy.rotate.then(fake_refresh);
    if let Some(r) = &refresh {
        valid[i] = r.clone();
    }
    drop(valid);
    grant_reply(shared, &policy, access, refresh, policy.expires_in)
}
