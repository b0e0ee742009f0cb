//! Signing in and out. It owns PKCE (verifier, challenge, and a separate `state`), the authorize
//! URL, reading what the user pastes back, and saving a login or removing it under the same lock
//! and atomic write as a refresh. A login is made the way Claude Code makes one: its scopes, and
//! the plan from the account's profile ([`crate::profile`]) saved with the tokens. Before the
//! browser step it checks that the store could take the login ([`check_store`]). It does no
//! terminal or browser I/O: the binary does.
//!
//! This module holds the scopes a login asks for; `pkce` the PKCE pair and the authorize URL,
//! `paste` the reading of the paste, `save` the store check, the save and `logout`, `error`
//! why a login failed and what to do about it.

mod error;
mod paste;
mod pkce;
mod save;

pub use error::LoginError;
pub use paste::{PasteError, Pasted, check_state, parse_paste};
pub use pkce::{Pkce, authorize_url, challenge_for};
pub use save::{
    LoggedOut, LoginRequest, LoginStep, ProfileLookup, Saved, check_store, has_login, logout,
    save_login,
};

/// The scopes a normal login asks for: Claude Code 2.1.332's own. A login with fewer (the seed's
/// three) works for inference, but Claude Code then finds no plan for it and treats it as a
/// lesser login than its own.
pub const DEFAULT_SCOPE: &str = "org:create_api_key user:profile user:inference \
                                 user:sessions:claude_code user:mcp_servers user:file_upload";
/// The one scope a long-lived login asks for: least privilege for a token that lives a year.
pub const LONG_LIVED_SCOPE: &str = "user:inference";
/// A long-lived login asks for a year.
pub const LONG_LIVED_SECONDS: u64 = 31_536_000;
