//! Reading what the service managers and the service files say, for `doctor`'s service facts:
//! `systemctl show` properties and its `ExecStart=` command line, unit files (`ExecStart=`,
//! `Environment=`, systemd's quoting and specifiers), `launchctl print`'s blocks, an agent's
//! plist; and from a daemon's command line and environment, which logins it keeps (the
//! contract's order). Pure text in, values out: it runs nothing (but canonicalizing paths to
//! compare them).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokend_core::store::{self, LocateEnv};

/// `Key=Value` lines of `systemctl show`.
pub fn properties(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The command line in `systemctl show`'s `ExecStart={ path=… ; argv[]=… ; … }`.
pub fn show_argv(value: &str) -> Vec<String> {
    let Some(start) = value.find("argv[]=") else {
        return Vec::new();
    };
    let rest = &value[start + "argv[]=".len()..];
    let end = rest.find(" ; ").unwrap_or(rest.len());
    words(&rest[..end])
}

/// `ExecStart=` and `Environment=` of a unit file's `[Service]` section, as systemd reads them
/// back (quotes, `%%`, `%h`, `$$`); a later file's empty `ExecStart=` resets it.
pub fn read_unit(text: &str, home: Option<&Path>, argv: &mut Vec<String>, env: &mut Vec<String>) {
    let home = home.map(|h| h.display().to_string()).unwrap_or_default();
    let specifiers = |w: String| {
        w.replace("%%", "\u{0}")
            .replace("%h", &home)
            .replace('\u{0}', "%")
    };
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "ExecStart" => {
                let value = value.trim().trim_start_matches(['-', '@', ':', '+', '!']);
                *argv = words(value)
                    .into_iter()
                    .map(|w| specifiers(w).replace("$$", "$"))
                    .collect();
            }
            "Environment" => env.extend(words(value).into_iter().map(specifiers)),
            _ => {}
        }
    }
}

/// `K=V` words into pairs.
pub fn env_pairs(words: &[String]) -> Vec<(String, String)> {
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Splits a line into words as systemd's unit syntax and `systemctl show` quote them: spaces
/// separate, double or single quotes group, a backslash escapes the next character (`\n` and
/// `\t` are control characters).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => {
                in_word = true;
                match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some(other) => word.push(other),
                    None => {}
                }
            }
            (q, None) if q == '"' || q == '\'' => {
                quote = Some(q);
                in_word = true;
            }
            (q, Some(open)) if q == open => quote = None,
            (w, None) if w.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (other, _) => {
                word.push(other);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The `arguments = { … }` and `environment = { K => V … }` blocks of `launchctl print`.
pub fn read_print(out: &str) -> (Vec<String>, Vec<(String, String)>) {
    let block = |name: &str| -> Vec<String> {
        let mut lines = out.lines().map(str::trim);
        let header = format!("{name} = {{");
        if !lines.any(|l| l == header) {
            return Vec::new();
        }
        lines.take_while(|l| *l != "}").map(str::to_owned).collect()
    };
    let argv = block("arguments");
    let env = block("environment")
        .iter()
        .filter_map(|l| l.split_once(" => "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (argv, env)
}

/// `ProgramArguments` and `EnvironmentVariables` of an agent's plist (the plain XML form
/// `service install` writes).
pub fn read_plist(text: &str) -> (Vec<String>, Vec<(String, String)>) {
    // Comments first: the template has some, and a commented-out tag is not one.
    let mut plain = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        plain.push_str(&rest[..start]);
        rest = rest[start..]
            .find("-->")
            .map_or("", |end| &rest[start + end + 3..]);
    }
    plain.push_str(rest);
    let after_key = |key: &str, close: &str| -> Option<String> {
        let at = plain.find(&format!("<key>{key}</key>"))?;
        let from = &plain[at..];
        let end = from.find(close)?;
        Some(from[..end].to_owned())
    };
    let strings = |s: &str, tag: &str| -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut found = Vec::new();
        let mut rest = s;
        while let Some(a) = rest.find(&open) {
            let Some(b) = rest[a..].find(&close) else {
                break;
            };
            found.push(xml_unescape(&rest[a + open.len()..a + b]));
            rest = &rest[a + b + close.len()..];
        }
        found
    };
    let argv = after_key("ProgramArguments", "</array>")
        .map(|s| strings(&s, "string"))
        .unwrap_or_default();
    let env = after_key("EnvironmentVariables", "</dict>")
        .map(|s| {
            let s = &s["<key>EnvironmentVariables</key>".len()..];
            strings(s, "key")
                .into_iter()
                .zip(strings(s, "string"))
                .collect()
        })
        .unwrap_or_default();
    (argv, env)
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The logins a daemon started with `argv` (the program first) and `env` keeps, by the
/// contract's rules: its `--credentials`/`--config-dir` flags, else `CLAUDE_TOKEND_CONFIG_DIRS`,
/// else `CLAUDE_TOKEND_CREDENTIALS`, else the login located from
/// `CLAUDE_SECURESTORAGE_CONFIG_DIR`, `CLAUDE_CONFIG_DIR` and `HOME`. For each, its
/// credentials path and its Keychain item: the service name Claude Code derives from the
/// config directory's text as written (`None` for a login named by its file).
pub fn kept_of(
    argv: &[String],
    env: &[(String, String)],
    home: Option<&Path>,
) -> (Vec<PathBuf>, Vec<Option<String>>) {
    let var = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| OsString::from(v))
    };
    let home = var("HOME").or_else(|| home.map(|h| h.as_os_str().to_owned()));
    // A config directory's login: its file, and its item from the text as written.
    let of_dir = |dir: OsString| {
        let item = store::keychain_service(&LocateEnv {
            securestorage_dir: None,
            config_dir: Some(dir.clone()),
            home: None,
            user: None,
        });
        (PathBuf::from(dir).join(store::FILE_NAME), Some(item))
    };
    let mut kept: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        for (flag, is_dir) in [("--config-dir", true), ("--credentials", false)] {
            let value = if a == flag {
                args.next().cloned()
            } else {
                a.strip_prefix(flag)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_owned)
            };
            if let Some(v) = value {
                kept.push(match is_dir {
                    true => of_dir(OsString::from(v)),
                    false => (PathBuf::from(v), None),
                });
            }
        }
    }
    if kept.is_empty() {
        if let Some(list) = var("CLAUDE_TOKEND_CONFIG_DIRS").filter(|v| !v.is_empty())
            && let Ok(dirs) = crate::logins::config_dirs_list(&list, home.as_deref())
        {
            kept = dirs
                .into_iter()
                .map(|d| of_dir(d.into_os_string()))
                .collect();
        } else if let Some(path) = var("CLAUDE_TOKEND_CREDENTIALS").filter(|v| !v.is_empty()) {
            kept.push((PathBuf::from(path), None));
        } else {
            let env = LocateEnv {
                securestorage_dir: var("CLAUDE_SECURESTORAGE_CONFIG_DIR"),
                config_dir: var("CLAUDE_CONFIG_DIR"),
                home,
                user: None,
            };
            if let Ok((path, _)) = store::locate(None, &env) {
                kept.push((path, Some(store::keychain_service(&env))));
            }
        }
    }
    kept.into_iter().unzip()
}

/// Whether two credentials paths name one login: the same path, or (resolving links as far
/// as they exist) the same file or the same place in the same directory.
pub fn same_login(a: &Path, b: &Path) -> bool {
    let a = store::absolute_lexically(a);
    let b = store::absolute_lexically(b);
    a == b || canonical(&a) == canonical(&b)
}

fn canonical(p: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(p) {
        return real;
    }
    match (p.parent().map(std::fs::canonicalize), p.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn words_as_systemd_quotes_them() {
        assert_eq!(
            words(r#"a "b c" 'd e' f\ g "h\"i""#),
            s(&["a", "b c", "d e", "f g", "h\"i"])
        );
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(words(r#""""#), s(&[""]));
    }

    #[test]
    fn show_output_is_read() {
        let out = "LoadState=loaded\nExecStart={ path=/usr/bin/claude-tokend ; argv[]=/usr/bin/claude-tokend --config-dir /a ; ignore_errors=no ; start_time=[n/a] }\nEnvironment=CLAUDE_CONFIG_DIR=/x \"X=a b\"\n";
        let props = properties(out);
        let get = |k: &str| props.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(
            show_argv(&get("ExecStart")),
            s(&["/usr/bin/claude-tokend", "--config-dir", "/a"])
        );
        assert_eq!(
            env_pairs(&words(&get("Environment"))),
            vec![
                ("CLAUDE_CONFIG_DIR".into(), "/x".into()),
                ("X".into(), "a b".into())
            ]
        );
    }

    #[test]
    fn unit_files_are_read_as_systemd_reads_them() {
        let unit = "[Unit]\nExecStart=/not/this\n[Service]\nExecStart=/p/claude-tokend --credentials \"/h/a$$b/c 100%%\"\n# Environment=NO=1\nEnvironment=\"CLAUDE_TOKEND_CONFIG_DIRS=%h/x:/y\" CLAUDE_CONFIG_DIR=/z\n";
        let (mut argv, mut env) = (Vec::new(), Vec::new());
        read_unit(unit, Some(Path::new("/home/u")), &mut argv, &mut env);
        assert_eq!(
            argv,
            s(&["/p/claude-tokend", "--credentials", "/h/a$b/c 100%"])
        );
        assert_eq!(
            env,
            s(&[
                "CLAUDE_TOKEND_CONFIG_DIRS=/home/u/x:/y",
                "CLAUDE_CONFIG_DIR=/z"
            ])
        );
    }

    #[test]
    fn logins_follow_the_contracts_order() {
        let home = Some(Path::new("/home/u"));
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = |x: &str| PathBuf::from(x);
        type Case = (Vec<String>, Vec<(String, String)>, Vec<PathBuf>);
        let cases: Vec<Case> = vec![
            (
                s(&["prog"]),
                env(&[]),
                vec![p("/home/u/.claude/.credentials.json")],
            ),
            (
                s(&["prog"]),
                env(&[("CLAUDE_CONFIG_DIR", "/c")]),
                vec![p("/c/.credentials.json")],
            ),
            (
                s(&["prog"]),
                env(&[
                    ("CLAUDE_CONFIG_DIR", "/c"),
                    ("CLAUDE_SECURESTORAGE_CONFIG_DIR", "/s"),
                ]),
                vec![p("/s/.credentials.json")],
            ),
            (
                s(&["prog"]),
                env(&[
                    ("CLAUDE_TOKEND_CREDENTIALS", "/f.json"),
                    ("CLAUDE_CONFIG_DIR", "/c"),
                ]),
                vec![p("/f.json")],
            ),
            (
                s(&["prog"]),
                env(&[
                    ("CLAUDE_TOKEND_CONFIG_DIRS", "~/a:/b"),
                    ("CLAUDE_TOKEND_CREDENTIALS", "/f.json"),
                ]),
                vec![p("/home/u/a/.credentials.json"), p("/b/.credentials.json")],
            ),
            (
                s(&[
                    "prog",
                    "--config-dir",
                    "/d",
                    "--mirror",
                    "/m",
                    "--credentials=/e.json",
                ]),
                env(&[("CLAUDE_TOKEND_CONFIG_DIRS", "/a")]),
                vec![p("/d/.credentials.json"), p("/e.json")],
            ),
            (
                s(&["prog"]),
                env(&[("HOME", "/other")]),
                vec![p("/other/.claude/.credentials.json")],
            ),
        ];
        for (argv, env, want) in cases {
            assert_eq!(kept_of(&argv, &env, home).0, want, "{argv:?} {env:?}");
        }
    }

    #[test]
    fn launchctl_print_and_plists_are_read() {
        let print = "gui/501/io.github.claude-tokend = {\n\tactive count = 1\n\tstate = running\n\n\targuments = {\n\t\t/opt/bin/claude-tokend\n\t\t--config-dir\n\t\t/Users/u/a b\n\t}\n\n\tinherited environment = {\n\t\tSSH_AUTH_SOCK => /x\n\t}\n\n\tenvironment = {\n\t\tHOME => /Users/u\n\t\tCLAUDE_CONFIG_DIR => /c\n\t}\n\tpid = 321\n}\n";
        let (argv, env) = read_print(print);
        assert_eq!(
            argv,
            s(&["/opt/bin/claude-tokend", "--config-dir", "/Users/u/a b"])
        );
        assert_eq!(
            env,
            vec![
                ("HOME".into(), "/Users/u".into()),
                ("CLAUDE_CONFIG_DIR".into(), "/c".into())
            ]
        );
        let plist = "<plist><dict>\n<key>ProgramArguments</key>\n<array>\n<string>/p &amp; q</string>\n<string>--credentials</string>\n<string>/f</string>\n</array>\n<!-- <key>EnvironmentVariables</key> -->\n<key>EnvironmentVariables</key>\n<dict>\n<key>HOME</key>\n<string>/Users/u</string>\n<!-- @ENVIRONMENT@ -->\n<key>CLAUDE_CONFIG_DIR</key>\n<string>/c&lt;1&gt;</string>\n</dict>\n<key>RunAtLoad</key>\n<true/>\n</dict></plist>\n";
        let (argv, env) = read_plist(plist);
        assert_eq!(argv, s(&["/p & q", "--credentials", "/f"]));
        assert_eq!(
            env,
            vec![
                ("HOME".into(), "/Users/u".into()),
                ("CLAUDE_CONFIG_DIR".into(), "/c<1>".into())
            ]
        );
    }
}
