//! The Keychain store: Claude Code's generic-password item in the macOS login keychain, read
//! and written only through the `security` command found on `PATH`, exactly as Claude Code
//! does it (a program linked against Security.framework would re-stamp the item's access list
//! and make Claude Code prompt). It owns the command lines, the reading of plain or hex output,
//! the exit codes that matter (44: no item; 36: locked), and finding the keychain file the
//! daemon watches. The value is the same JSON document as the file, compact.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{Place, StoreError};

/// `security`'s exit code when the item does not exist.
const NO_ITEM: i32 = 44;
/// `security`'s exit code when the keychain is locked.
const LOCKED: i32 = 36;
/// The longest `-i` line (without its newline) that `security` reads whole. Its buffer is 4095
/// bytes and a longer line is cut, the rest running as a second command; Claude Code keeps a
/// margin below that, and so does this program. Longer values go in argv.
pub const MAX_INTERACTIVE_LINE: usize = 4032;
/// How much a refresh may grow the document, generously: tokens longer than the ones stored,
/// and the fields a grant may add (`refreshTokenExpiresAt`, `scopes`). The check before a
/// request judges the document as it would be with this much more.
pub const GROWTH_ALLOWANCE: usize = 4096;
/// Room kept free below the system's argument limits: `posix_spawn`'s own bookkeeping, and an
/// environment that may change a little before `security` is started.
const ARGV_MARGIN: usize = 4096;
/// How long one `security` run may take. A keychain that shows a GUI prompt nobody answers
/// (an agent outside a login session) would otherwise hang the daemon.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// One Keychain item: its service (with Claude Code's config-dir suffix) and account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keychain {
    pub service: String,
    pub account: String,
}

impl Keychain {
    pub fn place(&self) -> Place {
        Place::Item {
            service: self.service.clone(),
            account: self.account.clone(),
        }
    }

    /// The item's value: `find-generic-password -w` prints it plain, or as hex when it holds
    /// bytes that are not printable; both are accepted (a JSON document is never all hex digits).
    pub(super) fn read(&self) -> Result<Vec<u8>, StoreError> {
        let out = self.run(
            "reading",
            &[
                "find-generic-password",
                "-a",
                &self.account,
                "-w",
                "-s",
                &self.service,
            ],
            None,
        )?;
        let mut text = out.stdout;
        while text.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            text.pop();
        }
        Ok(decode_hex(&text).unwrap_or(text))
    }

    /// Whether the item exists (`Ok(false)`: `security` said 44). Any other failure is an error:
    /// a locked keychain is not an absent item.
    pub fn exists(&self) -> Result<bool, StoreError> {
        match self.attributes() {
            Ok(_) => Ok(true),
            Err(StoreError::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The keychain file that holds the item (`keychain: "…"` in the attribute listing), which
    /// changes on every write to it: the daemon watches it instead of polling `security`.
    pub fn keychain_file(&self) -> Option<PathBuf> {
        let listing = self.attributes().ok()?;
        parse_keychain_path(&listing)
    }

    fn attributes(&self) -> Result<String, StoreError> {
        let out = self.run(
            "reading",
            &[
                "find-generic-password",
                "-a",
                &self.account,
                "-s",
                &self.service,
            ],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `bytes` as the item's value (created or updated: `-U`), hex-encoded with `-X`.
    /// The command goes on `security -i`'s stdin, so the secret is in no process's argv; a line
    /// too long for `security`'s line buffer goes in argv instead, since a cut line would run
    /// its tail as a second command.
    pub(super) fn write(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let hex = encode_hex(bytes);
        let line = interactive_line(&self.account, &self.service, &hex);
        if line.len() <= MAX_INTERACTIVE_LINE {
            let mut input = line.into_bytes();
            input.push(b'\n');
            self.run("writing", &["-i"], Some(&input))?;
        } else {
            self.run("writing", &self.write_args(&hex), None)?;
        }
        Ok(())
    }

    /// The arguments of a write given on the command line (a value too long for `-i`).
    fn write_args<'a>(&'a self, hex: &'a str) -> [&'a str; 8] {
        [
            "add-generic-password",
            "-U",
            "-a",
            &self.account,
            "-s",
            &self.service,
            "-X",
            hex,
        ]
    }

    /// Checks, before a request spends a refresh token, that a document of `len` bytes (the
    /// current one with [`GROWTH_ALLOWANCE`] added) can be written the way [`write`](Self::write)
    /// writes it: on `security -i`'s stdin, or else as arguments, which the kernel refuses
    /// (E2BIG) past the limit on one argument (Linux: 128 KiB) or on all of them with the
    /// environment (`ARG_MAX`). A document too big is refused here, while nothing is spent.
    pub(super) fn check_room(&self, len: usize) -> Result<(), StoreError> {
        let hex = len.saturating_add(GROWTH_ALLOWANCE).saturating_mul(2);
        let quoted = |s: &str| s.len() + s.matches(['"', '\\']).count() + 2;
        // Everything but the hex: the names are short, and nothing below can overflow.
        let words = "add-generic-password -U -a  -s  -X \"\"".len()
            + quoted(&self.account)
            + quoted(&self.service);
        if hex.saturating_add(words) <= MAX_INTERACTIVE_LINE {
            return Ok(());
        }
        // `security` and the write's arguments but the hex itself (counted apart).
        let write_args = self.write_args("");
        let args = std::iter::once("security")
            .chain(write_args[..write_args.len() - 1].iter().copied())
            .collect::<Vec<_>>();
        let limits = argv_limits();
        let pointer = std::mem::size_of::<usize>();
        let env: usize = std::env::vars_os()
            .map(|(k, v)| k.len() + v.len() + 2 + pointer)
            .sum();
        // All but the hex argument: the other strings with their NULs, the environment, the
        // pointers (argv's and envp's, with their NULL ends), the hex's NUL and a margin.
        let besides_hex = args.iter().map(|a| a.len() + 1).sum::<usize>()
            + env
            + (args.len() + 3) * pointer
            + 1
            + ARGV_MARGIN;
        // The hex argument and its NUL must fit in one argument, and everything in all.
        let fits_one = limits.one.is_none_or(|one| hex < one);
        if fits_one && hex.saturating_add(besides_hex) <= limits.all {
            return Ok(());
        }
        // The largest document that fits, for the message: the tighter of the two limits.
        let by_all = limits.all.saturating_sub(besides_hex) / 2;
        let by_one = limits
            .one
            .map_or(usize::MAX, |one| one.saturating_sub(1) / 2);
        Err(StoreError::TooBig {
            place: self.place(),
            size: len,
            limit: by_all.min(by_one).saturating_sub(GROWTH_ALLOWANCE),
            checked: true,
        })
    }

    /// Deletes the item (a logout that removed its only key).
    pub(super) fn delete(&self) -> Result<(), StoreError> {
        self.run(
            "deleting",
            &[
                "delete-generic-password",
                "-a",
                &self.account,
                "-s",
                &self.service,
            ],
            None,
        )
        .map(drop)
    }

    /// Runs `security` with `args` (and `input` on stdin), mapping its exit code: 0 is the
    /// output, 44 a missing item, 36 a locked keychain, anything else a failure of the Keychain
    /// that may pass. Nothing `security` printed on stdout reaches an error (it may be a value).
    fn run(
        &self,
        action: &'static str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Output, StoreError> {
        let place = self.place();
        let spawned = Command::new("security")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            // Arguments past the system's limit: a write too big for `security`'s command line
            // (the check before a request should have refused it). Not transient: it will
            // fail the same way until the document shrinks.
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {
                let size = args.last().map_or(0, |hex| hex.len() / 2);
                return Err(StoreError::TooBig {
                    place,
                    size,
                    limit: argv_limits().one.unwrap_or(argv_limits().all) / 2,
                    checked: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Unreadable {
                    place,
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "the `security` command is not on PATH (the Keychain store runs macOS's \
                         /usr/bin/security; use --store file elsewhere)",
                    ),
                });
            }
            Err(e) => {
                return Err(StoreError::KeychainUnavailable {
                    place,
                    locked: false,
                    detail: format!("cannot run `security` for {action}: {e}"),
                });
            }
        };
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A `security` that exits early closes the pipe; its exit code says why.
            let _ = stdin.write_all(input);
        }
        let out =
            wait_with_timeout(child, RUN_TIMEOUT).map_err(|e| StoreError::KeychainUnavailable {
                place: place.clone(),
                locked: false,
                detail: format!("`security` ({action}) did not finish: {e}"),
            })?;
        match out.status.code() {
            Some(0) => Ok(out),
            Some(NO_ITEM) => Err(StoreError::Missing { place }),
            Some(LOCKED) => Err(StoreError::KeychainUnavailable {
                place,
                locked: true,
                detail: String::new(),
            }),
            code => {
                // What `security` said helps, but a write's command line holds the value: its
                // complaint about a write is never repeated, in case it quotes what it read.
                let said = match action {
                    "writing" => String::new(),
                    _ => {
                        let said = String::from_utf8_lossy(&out.stderr);
                        let said = said.lines().next().unwrap_or("").trim().to_owned();
                        said.chars().take(200).collect()
                    }
                };
                Err(StoreError::KeychainUnavailable {
                    place,
                    locked: false,
                    detail: format!(
                        "`security` failed while {action} ({}){}",
                        code.map_or("killed by a signal".to_owned(), |c| format!("exit {c}")),
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {said}")
                        }
                    ),
                })
            }
        }
    }
}

/// The kernel's limits on the arguments (and environment) a program is started with.
struct ArgvLimits {
    /// One argument, with its NUL (Linux's MAX_ARG_STRLEN, 32 pages); `None` where there is no
    /// such limit (macOS).
    one: Option<usize>,
    /// All arguments and the environment, with their NULs and pointers (`ARG_MAX`).
    all: usize,
}

fn argv_limits() -> ArgvLimits {
    // SAFETY: sysconf only reads a system setting.
    let (arg_max, page) = unsafe {
        (
            libc::sysconf(libc::_SC_ARG_MAX),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    // POSIX's minimum ARG_MAX when the system will not say.
    let all = usize::try_from(arg_max)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(4096);
    let one = cfg!(any(target_os = "linux", target_os = "android")).then(|| {
        usize::try_from(page)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(4096)
            * 32
    });
    ArgvLimits { one, all }
}

/// Waits for `child` and collects its output, killing it after `limit`. The output is read on
/// a thread so a full pipe can never deadlock the wait.
fn wait_with_timeout(child: std::process::Child, limit: Duration) -> io::Result<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            // SAFETY: kill with a pid we spawned and have not yet reaped (the waiting thread
            // reaps it only after it exits, which this kill causes).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = rx.recv();
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer in {}s", limit.as_secs()),
            ))
        }
    }
}

/// The `security -i` command line that writes `hex` (no newline). Values are quoted as
/// `security`'s own parser reads them: inside double quotes, `\` and `"` are escaped.
pub fn interactive_line(account: &str, service: &str, hex: &str) -> String {
    format!(
        "add-generic-password -U -a {} -s {} -X {}",
        quote(account),
        quote(service),
        quote(hex)
    )
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `text` spells in hex, when it is non-empty, even-length hex and nothing else.
pub fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// The path in the listing's `keychain: "…"` line.
pub fn parse_keychain_path(listing: &str) -> Option<PathBuf> {
    listing.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("keychain:")?.trim();
        let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.is_empty()).then(|| PathBuf::from(inner))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_plain_json_is_never_taken_for_hex() {
        let doc = br#"{"claudeAiOauth":{"accessToken":"x\u00e9"}}"#;
        assert_eq!(decode_hex(encode_hex(doc).as_bytes()).unwrap(), doc);
        assert_eq!(decode_hex(doc), None);
        assert_eq!(decode_hex(b"7b7D"), Some(b"{}".to_vec()), "either case");
        for bad in [&b""[..], b"7", b"7g", b"7b 7d"] {
            assert_eq!(decode_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_interactive_line_quotes_like_security_reads_it() {
        assert_eq!(
            interactive_line("u", "Claude Code-credentials", "7b7d"),
            r#"add-generic-password -U -a "u" -s "Claude Code-credentials" -X "7b7d""#
        );
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn the_room_check_refuses_only_what_security_cannot_be_given() {
        let item = Keychain {
            service: "Claude Code-credentials".into(),
            account: "u".into(),
        };
        let too_big = |len: usize| matches!(item.check_room(len), Err(StoreError::TooBig { .. }));
        // Stdin, then argv well within every system's limits.
        for len in [0, 100, 1_900, 20_000] {
            assert!(item.check_room(len).is_ok(), "{len}");
        }
        // Past any ARG_MAX there is.
        assert!(too_big(64 * 1024 * 1024));
        // Linux: one argument holds at most 32 pages, so 200 KB of hex is too many.
        if cfg!(target_os = "linux") {
            assert!(too_big(100_000));
            assert!(!too_big(50_000));
        }
        match item.check_room(usize::MAX) {
            Err(StoreError::TooBig { size, limit, .. }) => {
                assert_eq!(size, usize::MAX, "saturated, no panic");
                assert!(limit < 64 * 1024 * 1024);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_the_keychain_file_in_the_listing() {
        let listing = "keychain: \"/Users/u/Library/Keychains/login.keychain-db\"\n\
                       version: 512\nclass: \"genp\"\nattributes:\n    \"acct\"<blob>=\"u\"\n";
        assert_eq!(
            parse_keychain_path(listing),
            Some(PathBuf::from(
                "/Users/u/Library/Keychains/login.keychain-db"
            ))
        );
        assert_eq!(parse_keychain_path("class: \"genp\"\n"), None);
    }
}
