//! Rendering the service files from the templates shipped in `systemd/` and `launchd/`, which
//! are embedded at build time so the repository's files are the one source of truth: the unit's
//! `ExecStart=` and `Environment=` lines (in the unit, or in a drop-in on a package's unit), the
//! sandbox drop-in's `ReadWritePaths=`, the agent's program, home and environment. Pure text in, text out; it never touches the disk. Every
//! value is carried exactly (systemd's quoting and specifier rules, XML escaping), and one that
//! neither format can carry (a newline, say) is refused rather than escaped halfway.

use std::fmt::Write as _;
use std::path::Path;

use crate::exit;

// Read through crates/daemon/systemd and crates/daemon/launchd, symlinks to the repository's
// directories, so that the crate published on crates.io carries the files (a package holds
// nothing outside its own directory) and `cargo install claude-tokend` builds.
/// The systemd user unit, as shipped in `systemd/`.
pub(super) const UNIT_TEMPLATE: &str = include_str!("../../systemd/claude-tokend.service");
/// The optional sandboxing drop-in, as shipped in `systemd/`.
pub(super) const SANDBOX_TEMPLATE: &str = include_str!("../../systemd/claude-tokend-sandbox.conf");
/// The launchd agent, as shipped in `launchd/`.
pub(super) const AGENT_TEMPLATE: &str = include_str!("../../launchd/io.github.claude-tokend.plist");

// The template lines rendering replaces or appends after. The unit tests check each is present
// exactly once, so an edit to a template that breaks rendering fails the build's tests.
const UNIT_EXEC_LINE: &str = "ExecStart=%h/.cargo/bin/claude-tokend";
const UNIT_ENV_MARK: &str = "# Settings from `claude-tokend service install`";
const SANDBOX_PATHS_LINE: &str = "ReadWritePaths=%h";
const AGENT_PROGRAM: &str = "@PROGRAM@";
const AGENT_HOME: &str = "@HOME@";
const AGENT_ENV_MARK: &str = "<!-- @ENVIRONMENT@ -->";

/// The unit: the template with `ExecStart=` running `program` with `args` (the logins named
/// by flags) and one `Environment=` line per carried setting.
pub(super) fn render_unit(
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> Result<String, u8> {
    let exec = exec_start(program, args)?;
    let mut out = String::with_capacity(UNIT_TEMPLATE.len() + 256);
    for line in UNIT_TEMPLATE.lines() {
        if line == UNIT_EXEC_LINE {
            out.push_str(&exec);
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with(UNIT_ENV_MARK) {
            out.push_str(&environment(env));
        }
    }
    Ok(out)
}

/// The drop-in that carries the same program, logins and settings onto a unit a package
/// installed: `ExecStart=` emptied first (a second one would be added to the package's, which
/// `Type=notify` refuses, instead of replacing it), then the unit's own `ExecStart=` and
/// `Environment=` lines. Everything else is the package's.
pub(super) fn render_dropin(
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> Result<String, u8> {
    let mut out = String::from(
        "# claude-tokend's program, logins and settings from `claude-tokend service install`, on\n\
         # the unit a package installed (which stays as the package has it). `service install`\n\
         # rewrites this file and `service uninstall` removes it; keep your own settings in\n\
         # override.conf (`systemctl --user edit claude-tokend`), which is read after it.\n\
         [Service]\n\
         ExecStart=\n",
    );
    out.push_str(&exec_start(program, args)?);
    out.push_str(&environment(env));
    Ok(out)
}

/// The `ExecStart=` line (with its newline) running `program` with `args`.
fn exec_start(program: &Path, args: &[String]) -> Result<String, u8> {
    let program = utf8(program)?;
    check_value("the program's path", &program)?;
    if let Some(why) = systemd_refuses_program(&program) {
        tell!("claude-tokend: the program's path {program:?}: {why}; nothing was written");
        return Err(exit::USAGE);
    }
    for a in args {
        check_value("a login's path", a)?;
    }
    // The program itself is a literal path to systemd (no variables there, only specifiers),
    // so its `$` stays one; the arguments after it are expanded.
    let mut words = vec![systemd_word(&program, Dollar::Plain)];
    words.extend(args.iter().map(|a| systemd_word(a, Dollar::Expanded)));
    Ok(format!("ExecStart={}\n", words.join(" ")))
}

/// One `Environment=` line per setting.
fn environment(env: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in env {
        let word = systemd_word(&format!("{k}={v}"), Dollar::Plain);
        writeln!(out, "Environment={word}").expect("String");
    }
    out
}

/// The sandbox drop-in with `ReadWritePaths=` listing `dirs`. Each is prefixed with `-`, so a
/// directory that does not exist yet (no login yet) does not stop the service from starting.
pub(super) fn render_sandbox(dirs: &[String]) -> Result<String, u8> {
    let list: Vec<String> = dirs
        .iter()
        .map(|d| systemd_word(&format!("-{d}"), Dollar::Plain))
        .collect();
    let mut out = String::with_capacity(SANDBOX_TEMPLATE.len() + 128);
    for line in SANDBOX_TEMPLATE.lines() {
        if line == SANDBOX_PATHS_LINE {
            writeln!(out, "ReadWritePaths={}", list.join(" ")).expect("String");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The agent: the template with the program (and `args` after it) and home filled in and the
/// carried settings added to `EnvironmentVariables`.
pub(super) fn render_agent(
    program: &Path,
    args: &[String],
    home: &Path,
    env: &[(&str, String)],
) -> Result<String, u8> {
    let program = utf8(program)?;
    let home = utf8(home)?;
    check_value("the program's path", &program)?;
    check_value("HOME", &home)?;
    for a in args {
        check_value("a login's path", a)?;
    }
    let mut out = String::with_capacity(AGENT_TEMPLATE.len() + 256);
    for line in AGENT_TEMPLATE.lines() {
        if line.trim() == AGENT_ENV_MARK {
            let indent = &line[..line.len() - line.trim_start().len()];
            for (k, v) in env {
                writeln!(out, "{indent}<key>{}</key>", xml_escape(k)).expect("String");
                writeln!(out, "{indent}<string>{}</string>", xml_escape(v)).expect("String");
            }
            continue;
        }
        let is_program = line.contains(AGENT_PROGRAM);
        let line = line
            .replace(AGENT_PROGRAM, &xml_escape(&program))
            .replace(AGENT_HOME, &xml_escape(&home));
        out.push_str(&line);
        out.push('\n');
        if is_program {
            let indent = &line[..line.len() - line.trim_start().len()];
            for a in args {
                writeln!(out, "{indent}<string>{}</string>", xml_escape(a)).expect("String");
            }
        }
    }
    Ok(out)
}

/// Whether systemd expands `$` in the directive a word goes into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dollar {
    /// `ExecStart=`'s arguments: `$NAME` and `${NAME}` are the environment's (even inside
    /// quotes), so a `$` of the value is written `$$`. (Not its first word, the program: that
    /// is a literal path, where `$$` would stay two.)
    Expanded,
    /// `Environment=`, `ReadWritePaths=`: a `$` is just a character.
    Plain,
}

/// One word of a unit file, as systemd.syntax(7) reads it back: `%` doubled (specifiers are
/// expanded in every directive written here), `$` doubled where systemd expands it, and the
/// word quoted when it holds anything but plain path characters, with `\` and `"` escaped
/// inside the quotes (C-style, which every directive written here unescapes). `check_value`
/// has already refused what no quoting carries (a newline, other control characters).
fn systemd_word(s: &str, dollar: Dollar) -> String {
    let mut s = s.replace('%', "%%");
    if dollar == Dollar::Expanded {
        s = s.replace('$', "$$");
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c));
    if plain {
        s
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn utf8(path: &Path) -> Result<String, u8> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        tell!(
            "claude-tokend: {} is not valid UTF-8, which service files cannot hold",
            path.display()
        );
        exit::USAGE
    })
}

/// Characters no service file can carry: a control character (a newline would end a unit's
/// line, and XML 1.0 has no way to write most of them) other than tab, and every Unicode
/// noncharacter (U+FDD0–U+FDEF, and the last two code points of each plane, U+FFFE and U+FFFF
/// up to U+10FFFE and U+10FFFF), which systemd refuses ("String is not UTF-8 clean, ignoring
/// assignment") and XML 1.0 excludes in part. Refused before anything is written, for systemd
/// and launchd alike; everything else (`"`, `\`, `$`, `%`, `&`, `<`) is carried exactly,
/// escaped as each format wants.
pub(super) fn check_value(what: &str, value: &str) -> Result<(), u8> {
    if let Some(c) = value
        .chars()
        .find(|&c| (c.is_control() && c != '\t') || is_noncharacter(c))
    {
        tell!(
            "claude-tokend: {what} ({value:?}) contains {c:?}, which cannot be written into a \
             service file; nothing was written"
        );
        return Err(exit::USAGE);
    }
    Ok(())
}

/// Unicode's noncharacters: U+FDD0–U+FDEF, and U+nFFFE and U+nFFFF in every plane.
fn is_noncharacter(c: char) -> bool {
    let n = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE
}

/// Why systemd would refuse `program` as the program of `ExecStart=` (its `config_parse_exec`:
/// "Executable name contains special characters", a fatal unit error), or `None` when it takes
/// it: any control character (a tab too) or DEL, a quote (`"` or `'`) or a backslash, however
/// the word is quoted (systemd's `string_is_safe`, checked after unquoting); a path of
/// `PATH_MAX` bytes or more, or with a part longer than `NAME_MAX` (its `path_is_valid`).
/// Measured with `systemd-analyze verify` (systemd 252): a space, `$`, `;`, `*`, `é` pass.
/// launchd takes all of these.
pub(super) fn systemd_refuses_program(program: &str) -> Option<String> {
    if let Some(c) = program
        .chars()
        .find(|&c| c.is_ascii_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Some(format!(
            "it contains {c:?}, which systemd refuses in the program of ExecStart= (\"Executable \
             name contains special characters\")"
        ));
    }
    if program.len() >= 4096 || program.split('/').any(|part| part.len() > 255) {
        return Some("it is longer than systemd takes for a program's path".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::home::LABEL;

    fn once(haystack: &str, needle: &str) -> bool {
        haystack
            .lines()
            .filter(|l| l.trim() == needle.trim() || l.starts_with(needle))
            .count()
            == 1
    }

    #[test]
    fn templates_have_each_anchor_once() {
        assert!(once(UNIT_TEMPLATE, UNIT_EXEC_LINE));
        assert!(once(UNIT_TEMPLATE, UNIT_ENV_MARK));
        assert!(once(SANDBOX_TEMPLATE, SANDBOX_PATHS_LINE));
        assert!(once(AGENT_TEMPLATE, AGENT_ENV_MARK));
        assert_eq!(AGENT_TEMPLATE.matches(AGENT_PROGRAM).count(), 1);
        assert_eq!(AGENT_TEMPLATE.matches(AGENT_HOME).count(), 3);
        assert!(AGENT_TEMPLATE.contains(&format!("<string>{LABEL}</string>")));
    }

    #[test]
    fn the_unit_has_what_the_issue_asks_for() {
        for line in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "LockPersonality=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "MemoryDenyWriteExecute=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "WantedBy=default.target",
        ] {
            assert!(
                UNIT_TEMPLATE.lines().any(|l| l == line),
                "unit lacks {line}"
            );
        }
        for prefix in ["RestartSec=", "WatchdogSec="] {
            assert!(
                UNIT_TEMPLATE.lines().any(|l| l.starts_with(prefix)),
                "unit lacks {prefix}"
            );
        }
        // The namespace-needing directives live only in the drop-in.
        for key in ["ProtectSystem=", "ProtectHome=", "PrivateTmp="] {
            assert!(
                !UNIT_TEMPLATE.lines().any(|l| l.starts_with(key)),
                "{key} in the base unit"
            );
            assert!(
                SANDBOX_TEMPLATE.lines().any(|l| l.starts_with(key)),
                "{key} not in the drop-in"
            );
        }
    }

    /// The unit's comments send a reader to the drop-in by the path `service install --sandbox`
    /// writes it to (`home.rs`), and to nothing else but the file shipped in the repository.
    #[test]
    fn the_unit_names_the_sandbox_drop_in_where_install_writes_it() {
        use crate::service::home::{SANDBOX_FILE, UNIT};
        let installed = format!("~/.config/systemd/user/{UNIT}.d/{SANDBOX_FILE}");
        assert!(UNIT_TEMPLATE.contains(&installed), "{UNIT_TEMPLATE}");
        for word in UNIT_TEMPLATE.split_whitespace() {
            let word = word
                .trim_matches(|c: char| "`(),;".contains(c))
                .trim_end_matches('.');
            if word.ends_with(".conf") {
                assert!(
                    word == installed || word == "systemd/claude-tokend-sandbox.conf",
                    "the unit names a drop-in as {word}"
                );
            }
        }
    }

    #[test]
    fn renders_the_unit_with_program_and_settings() {
        let env = vec![
            (
                "CLAUDE_TOKEND_CREDENTIALS",
                "/home/a b/50%/c.json".to_owned(),
            ),
            ("CLAUDE_CONFIG_DIR", "/home/u/.claude".to_owned()),
        ];
        let unit = render_unit(Path::new("/opt/my tools/claude-tokend"), &[], &env).unwrap();
        assert!(unit.contains("\nExecStart=\"/opt/my tools/claude-tokend\"\n"));
        assert!(!unit.contains(UNIT_EXEC_LINE));
        assert!(
            unit.contains("\nEnvironment=\"CLAUDE_TOKEND_CREDENTIALS=/home/a b/50%%/c.json\"\n")
        );
        assert!(unit.contains("\nEnvironment=CLAUDE_CONFIG_DIR=/home/u/.claude\n"));
        // The settings sit in [Service], before [Install].
        let env_at = unit.find("Environment=").unwrap();
        assert!(env_at > unit.find("[Service]").unwrap());
        assert!(env_at < unit.find("[Install]").unwrap());
        // A `$` in the program's own path stays one (systemd expands no variable there); in
        // its arguments it is doubled.
        let odd = render_unit(
            Path::new("/opt/v$1/claude-tokend"),
            &["--credentials".into(), "/d$x/c.json".into()],
            &[],
        )
        .unwrap();
        assert!(
            odd.contains("\nExecStart=\"/opt/v$1/claude-tokend\" --credentials \"/d$$x/c.json\"\n"),
            "{odd}"
        );
        let plain = render_unit(Path::new("/usr/bin/claude-tokend"), &[], &[]).unwrap();
        assert!(plain.contains("\nExecStart=/usr/bin/claude-tokend\n"));
        assert!(!plain.contains("Environment="));
    }

    #[test]
    fn renders_the_drop_in_for_a_packaged_unit() {
        let env = vec![("CLAUDE_CONFIG_DIR", "/home/u/50%".to_owned())];
        let args = ["--credentials".to_owned(), "/d$x/c.json".to_owned()];
        let dropin = render_dropin(Path::new("/usr/bin/claude-tokend"), &args, &env).unwrap();
        assert!(
            dropin.ends_with(
                "[Service]\nExecStart=\nExecStart=/usr/bin/claude-tokend --credentials \"/d$$x/c.json\"\n\
                 Environment=CLAUDE_CONFIG_DIR=/home/u/50%%\n"
            ),
            "{dropin}"
        );
        assert_eq!(
            render_dropin(Path::new("/x\ny"), &[], &[]),
            Err(exit::USAGE)
        );
    }

    #[test]
    fn renders_the_sandbox_paths() {
        let dropin = render_sandbox(&["/home/u".into(), "/data/my creds".into()]).unwrap();
        assert!(dropin.contains("\nReadWritePaths=-/home/u \"-/data/my creds\"\n"));
        assert!(!dropin.contains(SANDBOX_PATHS_LINE));
    }

    #[test]
    fn renders_the_agent_as_escaped_xml() {
        let env = vec![("CLAUDE_CONFIG_DIR", "/Users/a&b/<c>".to_owned())];
        let agent = render_agent(
            Path::new("/Users/a&b/bin/claude-tokend"),
            &[],
            Path::new("/Users/a&b"),
            &env,
        )
        .unwrap();
        assert!(agent.contains("<string>/Users/a&amp;b/bin/claude-tokend</string>"));
        assert!(agent.contains("<string>/Users/a&amp;b/Library/Logs/claude-tokend.log</string>"));
        assert!(agent.contains("<key>CLAUDE_CONFIG_DIR</key>"));
        assert!(agent.contains("<string>/Users/a&amp;b/&lt;c&gt;</string>"));
        assert!(!agent.contains('@'), "a placeholder was left:\n{agent}");
        let v: plist::Value = plist::from_bytes(agent.as_bytes()).expect("valid plist");
        let env = v.as_dictionary().unwrap()["EnvironmentVariables"]
            .as_dictionary()
            .unwrap();
        assert_eq!(env["HOME"].as_string(), Some("/Users/a&b"));
        assert_eq!(env["CLAUDE_CONFIG_DIR"].as_string(), Some("/Users/a&b/<c>"));
    }

    /// The embedded template itself is a well-formed plist with the right keys and types.
    #[test]
    fn the_agent_template_parses() {
        let v: plist::Value = plist::from_bytes(AGENT_TEMPLATE.as_bytes()).expect("valid plist");
        let d = v.as_dictionary().expect("a dict at the top");
        assert_eq!(d["Label"].as_string(), Some(LABEL));
        let args = d["ProgramArguments"]
            .as_array()
            .expect("ProgramArguments array");
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].as_string(), Some(AGENT_PROGRAM));
        assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
        let keep = d["KeepAlive"].as_dictionary().expect("KeepAlive dict");
        assert_eq!(keep["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(d["ProcessType"].as_string(), Some("Background"));
        assert!(d["ThrottleInterval"].as_unsigned_integer().unwrap() >= 10);
        assert_eq!(d["Umask"].as_unsigned_integer(), Some(0o077));
        for k in ["StandardOutPath", "StandardErrorPath"] {
            assert_eq!(
                d[k].as_string(),
                Some("@HOME@/Library/Logs/claude-tokend.log")
            );
        }
        let env = d["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["HOME"].as_string(), Some(AGENT_HOME));
    }

    #[test]
    fn words_are_quoted_and_escaped_by_table() {
        use Dollar::{Expanded, Plain};
        let cases = [
            ("/usr/bin/x", Plain, "/usr/bin/x"),
            ("A=b c", Plain, "\"A=b c\""),
            ("50%", Plain, "50%%"),
            ("$HOME", Plain, "\"$HOME\""),
            // ExecStart= would expand it, even inside quotes.
            ("/d${USER}x", Expanded, "\"/d$${USER}x\""),
            ("/d$x", Expanded, "\"/d$$x\""),
            (
                r#"C=notify-send "Claude login" "$M""#,
                Plain,
                r#""C=notify-send \"Claude login\" \"$M\"""#,
            ),
            (r"C=a\b", Plain, r#""C=a\\b""#),
            ("C=a\tb", Plain, "\"C=a\tb\""),
            ("", Plain, "\"\""),
        ];
        for (value, dollar, want) in cases {
            assert_eq!(systemd_word(value, dollar), want, "{value:?}");
        }
    }

    #[test]
    fn refuses_program_paths_systemd_refuses() {
        for bad in [
            "/x/quo'te/claude-tokend",
            "/x/q\"/claude-tokend",
            "/x/back\\slash/claude-tokend",
            "/x/t\tab/claude-tokend",
            "/x/del\u{7f}/claude-tokend",
        ] {
            assert!(systemd_refuses_program(bad).is_some(), "{bad:?}");
            assert_eq!(
                render_unit(Path::new(bad), &[], &[]),
                Err(exit::USAGE),
                "{bad:?}"
            );
        }
        let long_part = format!("/x/{}/claude-tokend", "a".repeat(256));
        assert!(systemd_refuses_program(&long_part).is_some());
        for good in [
            "/opt/my tools/claude-tokend",
            "/opt/v$1;*?[é/claude-tokend",
            &format!("/x/{}/claude-tokend", "a".repeat(255)),
        ] {
            assert_eq!(systemd_refuses_program(good), None, "{good:?}");
        }
    }

    #[test]
    fn refuses_values_no_service_file_can_hold() {
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{0}b",
            "a\u{1b}b",
            "a\u{7f}b",
            "a\u{85}b",
            "a\u{fffe}b",
            "a\u{ffff}b",
            "a\u{fdd0}b",
            "a\u{fdef}b",
            "a\u{1fffe}b",
            "a\u{1ffff}b",
            "a\u{10fffe}b",
            "\u{10ffff}",
        ] {
            assert_eq!(check_value("x", bad), Err(exit::USAGE), "{bad:?}");
        }
        for good in [
            "/home/a b/ü/50%$",
            "a\"b",
            "a\\b",
            "a\tb",
            "a\u{fffd}b",
            "a\u{fdcf}b",
            "a\u{fdf0}b",
            "a\u{1fffd}b",
            "\u{10fffd}",
        ] {
            assert_eq!(check_value("x", good), Ok(()), "{good:?}");
        }
    }
}
