//! A unit file as systemd reads it (its quoting, escapes and specifiers), and
//! `systemd-analyze --user verify` where this machine has it: so the tests check what systemd
//! would run, not the text the renderer wrote.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::{BIN, Env};

/// The words of a unit-file value as systemd reads them (`extract_first_word` with
/// `EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE`, systemd.syntax(7)): split at unquoted whitespace,
/// `"…"` and `'…'` quote (also mid-word), a backslash escapes in and out of quotes, C-style
/// (`\\`, `\"`, `\'`, `\n`, `\t`, `\xNN`). Then specifiers: `%%` is `%` (any other specifier is
/// a test failure: the renderer never writes one). A value systemd would refuse (an unfinished
/// quote or escape) panics.
pub fn systemd_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => {
                    let e = chars.next().expect("an escape at the end of the value");
                    word.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'x' => {
                            let hex: String = chars.by_ref().take(2).collect();
                            char::from(u8::from_str_radix(&hex, 16).expect("\\xNN"))
                        }
                        '\\' | '"' | '\'' | ' ' => e,
                        other => panic!("an escape systemd reads otherwise: \\{other}"),
                    });
                }
                (q, Some(open)) if q == open => quote = None,
                ('"' | '\'', None) => quote = Some(c),
                (w, None) if w.is_ascii_whitespace() => break,
                (other, _) => word.push(other),
            }
        }
        assert!(quote.is_none(), "an unfinished quote in {value:?}");
        words.push(specifiers(&word));
    }
}

/// `%%` → `%`; any other `%x` is a specifier the renderer must never have written.
fn specifiers(word: &str) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                other => panic!("a specifier %{other:?} in {word:?}"),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `Environment=` assignments of a unit, as systemd reads them.
pub fn unit_environment(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(systemd_words)
        .map(|w| {
            let (k, v) = w.split_once('=').expect("NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The program and arguments `ExecStart=` runs, as systemd reads them: the words, then, in the
/// arguments, `$$` → `$` (a lone `$` would be a variable systemd expands: a test failure). The
/// first word, the program, is a literal path: no variable is expanded there.
pub fn unit_exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    let mut words = systemd_words(line).into_iter();
    let program = words.next().expect("a program");
    std::iter::once(program)
        .chain(words.map(|w| {
            let mut out = String::new();
            let mut chars = w.chars();
            while let Some(c) = chars.next() {
                if c == '$' {
                    assert_eq!(chars.next(), Some('$'), "a lone $ in {w:?} is expanded");
                }
                out.push(c);
            }
            out
        }))
        .collect()
}

/// `systemd-analyze --user verify` on `unit`, when this machine has it: its complaints
/// (nothing when it verifies cleanly). The unit's `Documentation=` pages are generated and put
/// on MANPATH, as `.ci/verify-units.sh` does; where `man` itself is missing, the lines about
/// it are left out. `None` when there is no systemd-analyze.
pub fn systemd_verify(env: &Env, unit: &Path) -> Option<String> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .any(|d| d.join("systemd-analyze").is_file());
    if !found {
        return None;
    }
    let runtime = env.root.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let pages = env.root.join("man");
    let made = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(pages.join("man1"))
        .output()
        .expect("claude-tokend man --dir");
    assert!(made.status.success(), "man --dir failed");
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(unit)
        .env("MANPATH", format!("{}:", pages.display()))
        .env("HOME", env.home())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_CONFIG_HOME", env.root.join("xdg"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Command 'man "))
        .collect();
    if complaints.is_empty() {
        return Some(String::new());
    }
    Some(format!(
        "(exit {:?}) {}",
        out.status.code(),
        complaints.join("\n")
    ))
}
