//! The `mirrors` check of one login: does each access-only copy hold the source's current
//! access token? Each mirror is looked at as carefully as a write looks at it (its directory
//! belongs to a consumer: no link is followed, nothing but the mirror file is read) and nothing
//! there is created or written.

use tokend_core::mirror::{self, Compared, Mirror};

use super::store::Facts as StoreFacts;
use super::{Check, Findings, sh};

pub struct Facts {
    /// Each mirror's directory and what it holds compared with the source; `None` for all when
    /// the source cannot be read (so what they should hold is unknown).
    pub mirrors: Option<Vec<(String, Result<Compared, String>)>>,
}

impl Facts {
    pub fn gather(store: &StoreFacts, mirrors: &[Mirror]) -> Facts {
        let want = match &store.read {
            Ok(snapshot) => mirror::want_from(&snapshot.doc),
            Err(tokend_core::store::StoreError::Missing { .. }) => Some(mirror::Want::NoLogin),
            Err(_) => None,
        };
        Facts {
            mirrors: want.map(|want| {
                mirrors
                    .iter()
                    .map(|m| {
                        let got = m.compare(&want).map_err(|e| e.to_string());
                        (m.dir().display().to_string(), got)
                    })
                    .collect()
            }),
        }
    }
}

/// `mirrors`: warn for each mirror that does not hold the source's current access token.
pub fn check(f: &Facts) -> Check {
    let Some(mirrors) = &f.mirrors else {
        return Check::warn(
            "mirrors",
            "what the mirrors should hold is unknown: the source login cannot be read",
            "fix the store first (see the store check)",
        );
    };
    let mut found = Findings::default();
    let catch_up = "the daemon (with the same --mirror) writes a mirror within a second of \
                    each change: check that it runs (see the keeper check); `claude-tokend \
                    --once` with the same --mirror writes it now";
    for (dir, got) in mirrors {
        match got {
            Ok(Compared::Holds) => {}
            Ok(Compared::Differs) => found.warn(
                format!("the mirror {dir} does not hold the source's current access token"),
                catch_up,
            ),
            Ok(Compared::Missing) => found.warn(
                format!("the mirror {dir} has no {} yet", mirror::FILE_NAME),
                catch_up,
            ),
            Ok(Compared::HoldsRefreshToken) => found.warn(
                format!(
                    "the mirror {dir} holds a login with a refresh token (someone signed in \
                     there), so it is not written"
                ),
                format!(
                    "move that login away (mv {0} {0}.moved); the next write puts the copy \
                     there",
                    sh(&std::path::Path::new(dir).join(mirror::FILE_NAME))
                ),
            ),
            Ok(Compared::Foreign(what)) => found.warn(
                format!(
                    "the mirror {dir} holds {what} where its {} belongs",
                    mirror::FILE_NAME
                ),
                format!("the next write replaces it; {catch_up}"),
            ),
            Err(why) => found.warn(
                format!("the mirror cannot be looked at: {why}"),
                format!("make {dir} a directory of yours"),
            ),
        }
    }
    let dirs: Vec<&str> = mirrors.iter().map(|(d, _)| d.as_str()).collect();
    found.into_check(
        "mirrors",
        format!(
            "{} {} up to date with the source (its current access token, never its refresh \
             token)",
            dirs.join(", "),
            if dirs.len() == 1 { "is" } else { "are" }
        ),
    )
}
