//! What a user reads and what their shell runs, generated from the clap definition: the shell
//! completion scripts and the man page.

use std::path::Path;
use std::process::Command;

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// completions and the man page

/// What bash completes for `line` (the words typed so far; a trailing space starts a new, empty
/// word), with the generated script sourced into a clean bash and its completion function called
/// the way bash's programmable completion calls it: the command, the current word and the word
/// before it as arguments, `COMP_WORDS` and `COMP_CWORD` set.
fn bash_completes(env: &Env, script: &Path, line: &str) -> Vec<String> {
    let mut words: Vec<&str> = line.split(' ').collect();
    if words.is_empty() {
        words.push("");
    }
    let cword = words.len() - 1;
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        r#"source "$1" || exit 90
spec=$(complete -p claude-tokend) || exit 91
fn=${{spec#*-F }}; fn=${{fn%% *}}
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
"$fn" claude-tokend '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        words = quoted.join(" "),
        cur = words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program, "bash"])
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&env.root)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed for {line:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_after_a_subcommand() {
    let env = Env::systemd();
    let script = env.root.join("completion.bash");
    std::fs::write(&script, env.run(&["completions", "bash"]).ok().out).unwrap();
    for (line, want) in [
        (
            "claude-tokend ",
            &["service", "status", "completions", "man"][..],
        ),
        ("claude-tokend --cre", &["--credentials"][..]),
        (
            "claude-tokend service ",
            &["install", "uninstall", "status"][..],
        ),
        ("claude-tokend status --", &["--json"][..]),
        (
            "claude-tokend service install --",
            &["--now", "--force", "--sandbox"][..],
        ),
        ("claude-tokend completions ", &["bash", "zsh", "fish"][..]),
    ] {
        let got = bash_completes(&env, &script, line);
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "bash completes {line:?} to {got:?}, without {w}"
            );
        }
    }
    // The hidden flag is for tests and packagers, not for the user's TAB.
    let got = bash_completes(&env, &script, "claude-tokend service status --");
    assert!(got.iter().any(|g| g == "--help"), "{got:?}");
    assert!(!got.iter().any(|g| g == "--manager"), "{got:?}");
}

#[test]
fn no_completion_offers_a_hidden_flag() {
    let env = Env::systemd();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.run(&["completions", shell]).ok().out;
        for token in ["--manager", "-l manager"] {
            assert!(!out.contains(token), "{shell} completion offers {token}");
        }
    }
}

#[test]
fn completions_cover_the_commands_and_flags() {
    let env = Env::systemd();
    // Each shell spells a long flag its own way: fish as `-l credentials`.
    for (shell, marker, flag) in [
        ("bash", "complete -F", "--credentials"),
        ("zsh", "#compdef claude-tokend", "--credentials"),
        ("fish", "complete -c claude-tokend", "-l credentials"),
    ] {
        let run = env.run(&["completions", shell]).ok();
        assert!(run.out.contains(marker), "{shell}: no {marker}");
        for word in [
            "service",
            "install",
            "uninstall",
            "status",
            "completions",
            flag,
        ] {
            assert!(run.out.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script at least parses.
    let script = env.root.join("completion.bash");
    std::fs::write(&script, env.run(&["completions", "bash"]).ok().out).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    env.run(&["completions", "tcsh"]).code(2);
    env.run(&["completions"]).code(2);
}

/// Whether every quote `script` opens, it closes (a quoted value may span lines), by fish's rules: `'…'` (where `\'` and `\\`
/// are escapes), `"…"` (a backslash escapes the next character), a backslash outside quotes
/// escapes the next character, and `#` at the start of a word begins a comment.
fn fish_quotes_close(script: &str) -> bool {
    let mut quote = None;
    let mut chars = script.chars().peekable();
    let mut word_start = true;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') if word_start => {
                // A comment runs to the end of its line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                word_start = true;
                continue;
            }
            (None, '\\') | (Some('"'), '\\') => {
                chars.next();
            }
            (Some('\''), '\\') => {
                if matches!(chars.peek(), Some('\'') | Some('\\')) {
                    chars.next();
                }
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        word_start = quote.is_none() && c.is_whitespace();
    }
    quote.is_none()
}

/// Each script parses in its own shell (a flag dropped from the middle of a multi-line fish
/// statement once left every package with a fish file fish refused to load). Without the shell
/// on this machine, fish's file is still checked: every quote it opens, it closes.
#[test]
fn every_completion_script_parses_in_its_shell() {
    let env = Env::systemd();
    let fish = env.run(&["completions", "fish"]).ok().out;
    assert!(
        fish_quotes_close(&fish),
        "the fish completion leaves a quote open:\n{fish}"
    );
    for (shell, check) in [("fish", "--no-execute"), ("zsh", "-n"), ("bash", "-n")] {
        let script = env.root.join(format!("completion.{shell}"));
        std::fs::write(&script, env.run(&["completions", shell]).ok().out).unwrap();
        match Command::new(shell).arg(check).arg(&script).output() {
            Ok(out) => assert!(
                out.status.success() && out.stderr.is_empty(),
                "{shell} {check}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => println!("skipped: {shell} {check}: {shell} cannot be run here ({e})"),
        }
    }
}

#[test]
fn man_page_is_roff_from_the_cli_definition() {
    let env = Env::systemd();
    let run = env.run(&["man"]).ok();
    let page = run.out;
    assert!(page.contains(".TH claude-tokend 1"), "{page}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH \"HOW A REFRESH STAYS SAFE\"",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(page.contains(section), "no {section}:\n{page}");
    }
    // The never-waste rules are on the page, not only in the README.
    for rule in [
        "Compare\\-and\\-swap",
        "60 seconds",
        "Retry\\-After",
        "heartbeated",
    ] {
        assert!(
            page.contains(rule),
            "the rules section lacks {rule}:\n{page}"
        );
    }
    // The exit codes have a section of their own, not clap_mangen's catch-all for after_help.
    assert!(!page.contains(".SH EXTRA"), "{page}");
    for word in [r"\-\-credentials", r"\-\-once", "service"] {
        assert!(page.contains(word), "man page lacks {word}");
    }

    let dir = env.root.join("man1");
    env.run(&["man", "--dir", &dir.display().to_string()]).ok();
    for page in [
        "claude-tokend.1",
        "claude-tokend-service.1",
        "claude-tokend-service-install.1",
        "claude-tokend-man.1",
    ] {
        let text = read(&dir.join(page));
        assert!(text.contains(".TH"), "{page} is not roff");
    }
    assert_eq!(
        read(&dir.join("claude-tokend.1")),
        page,
        "`man` and `man --dir` write the same main page"
    );

    // A file where the directory should be: said plainly, not "File exists (os error 17)".
    let file = env.root.join("not-a-dir");
    std::fs::write(&file, "keep me").unwrap();
    let run = env
        .run(&["man", "--dir", &file.display().to_string()])
        .code(1);
    assert!(
        run.err.contains("is not a directory") && run.err.contains("--dir"),
        "{}",
        run.err
    );
    assert_eq!(read(&file), "keep me", "the file is left alone");
}

/// The section `name` of a roff page: from its `.SH` line to the next one.
fn section<'p>(page: &'p str, name: &str) -> &'p str {
    let start = page
        .find(&format!(".SH {name}\n"))
        .unwrap_or_else(|| panic!("no .SH {name}:\n{page}"));
    let rest = &page[start + 4..];
    &rest[..rest.find("\n.SH ").map_or(rest.len(), |e| e + 1)]
}

/// Every `claude-tokend...(N)` a page names, in roff (`\-` for `-`) or plain.
fn pages_named(text: &str) -> Vec<String> {
    let text = text
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "");
    let mut found = Vec::new();
    for (at, _) in text.match_indices("claude-tokend") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let after = &text[at + name.len()..];
        if let Some(section) = after.strip_prefix('(').and_then(|a| a.get(..2))
            && section.ends_with(')')
        {
            found.push(format!("{name}.{}", &section[..1]));
        }
    }
    found
}

#[test]
fn every_page_a_man_page_names_is_written() {
    let env = Env::systemd();
    let dir = env.root.join("man1");
    env.run(&["man", "--dir", &dir.display().to_string()]).ok();
    let written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!written.iter().any(|p| p.contains("help")), "{written:?}");
    let main = read(&dir.join("claude-tokend.1"));
    let see_also = pages_named(section(&main, "\"SEE ALSO\""));
    assert!(
        see_also.contains(&"claude-tokend-service-install.1".to_owned()),
        "{see_also:?}"
    );
    for page in &written {
        for named in pages_named(&read(&dir.join(page))) {
            assert!(
                written.contains(&named),
                "{page} names {named}, which `man --dir` does not write ({written:?})"
            );
        }
    }
}

/// `systemd-analyze verify` (and `systemctl --user help claude-tokend`) open the unit's
/// documentation: it must be a page `man --dir` writes, not an invented web address.
#[test]
fn the_unit_documents_itself_with_the_man_page() {
    let unit =
        read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd/claude-tokend.service"));
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .collect();
    assert_eq!(docs, ["man:claude-tokend(1)"], "{unit}");
    let env = Env::systemd();
    let dir = env.root.join("man1");
    env.run(&["man", "--dir", &dir.display().to_string()]).ok();
    assert!(dir.join("claude-tokend.1").is_file());
}

/// Every environment variable a source file of the binary or the library reads by name
/// (`var("X")`, `var_os("X")`, clap's `env = "X"`), except the debug-only test seams.
fn variables_read_by_the_sources() -> Vec<String> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    walk(&crates.join("daemon/src"), &mut files);
    walk(&crates.join("core/src"), &mut files);
    let mut names = Vec::new();
    for file in files {
        let text = read(&file);
        for opener in ["var(\"", "var_os(\"", "env = \""] {
            for (at, _) in text.match_indices(opener) {
                let name: String = text[at + opener.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty()
                    && !name.starts_with("CLAUDE_TOKEND_TEST_")
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
    }
    names
}

#[test]
fn the_man_page_names_every_variable_the_program_reads() {
    let env = Env::systemd();
    let page = env.run(&["man"]).ok().out;
    let environment = section(&page, "ENVIRONMENT");
    let names = variables_read_by_the_sources();
    // The scan itself must find what is certainly there, or it proves nothing.
    for sure in [
        "HOME",
        "CLAUDE_CONFIG_DIR",
        "CLAUDE_TOKEND_CREDENTIALS",
        "RUST_LOG",
    ] {
        assert!(
            names.iter().any(|n| n == sure),
            "the scan missed {sure}: {names:?}"
        );
    }
    for name in &names {
        assert!(
            environment.contains(&format!("\\fB{name}\\fR")),
            "ENVIRONMENT lacks {name}:\n{environment}"
        );
    }
    // And what the library's dependencies read for us (proxies, sd_notify's watchdog, CAs).
    for name in ["WATCHDOG_USEC", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE"] {
        assert!(environment.contains(name), "ENVIRONMENT lacks {name}");
    }
}

#[test]
fn exit_status_lists_every_exit_code() {
    let env = Env::systemd();
    let page = env.run(&["man"]).ok().out;
    let exit = section(&page, "\"EXIT STATUS\"");
    for code in ["0", "1", "2", "69", "75", "77", "78"] {
        assert!(
            exit.contains(&format!("\n\\fB{code}\\fR\n")),
            "EXIT STATUS lacks {code}:\n{exit}"
        );
    }
}

#[test]
fn help_shows_the_man_command() {
    let env = Env::systemd();
    let help = env.run(&["--help"]).ok().out;
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("man ")),
        "{help}"
    );
}

// ---------------------------------------------------------------------------------------------
// the launchd agent as XML

/// Parses `text` as XML the way the spec says, no leniency: roxmltree refuses what a browser
/// or the `plist` crate would let pass, such as `--` inside a comment. The DTD line of a plist
/// is allowed (it is only declared, never fetched).
#[track_caller]
fn strict_xml(what: &str, text: &str) {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    if let Err(e) = roxmltree::Document::parse_with_options(text, options) {
        panic!("{what} is not well-formed XML: {e}\n{text}");
    }
}

#[test]
fn the_agent_template_is_well_formed_xml() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../launchd/io.github.claude-tokend.plist");
    strict_xml("launchd/io.github.claude-tokend.plist", &read(&path));
}

#[test]
fn the_rendered_agent_is_well_formed_xml_with_awkward_paths_and_settings() {
    let mut env = Env::new("launchd");
    // Everything XML or a comment could choke on that a path or setting may hold.
    let odd = "a&b <c> 'd' \"e\" \\f --g-- -->";
    let home = env.root.join(format!("home {odd}"));
    std::fs::create_dir_all(&home).unwrap();
    let config = env.root.join(format!("config {odd}"));
    env.set("HOME", &home.display().to_string())
        .set("CLAUDE_CONFIG_DIR", &config.display().to_string());
    let agent_ua = format!("ua {odd}");
    env.run(&[
        "service",
        "install",
        "--credentials",
        &format!("creds {odd}.json"),
        "--user-agent",
        &agent_ua,
        "--refresh-before",
        "20m",
    ])
    .ok();
    let agent = home
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"));
    let text = read(&agent);
    strict_xml("the rendered agent", &text);

    // And the values read back exactly, through a plist reader.
    let v = plist::Value::from_file(&agent).expect("a plist");
    let vars = v.as_dictionary().unwrap()["EnvironmentVariables"]
        .as_dictionary()
        .unwrap();
    let creds = env.root.join(format!("creds {odd}.json"));
    for (key, want) in [
        ("HOME", home.display().to_string()),
        ("CLAUDE_CONFIG_DIR", config.display().to_string()),
        ("CLAUDE_TOKEND_CREDENTIALS", creds.display().to_string()),
        ("CLAUDE_TOKEND_USER_AGENT", agent_ua.clone()),
        ("CLAUDE_TOKEND_REFRESH_BEFORE", "20m".to_owned()),
    ] {
        assert_eq!(vars[key].as_string(), Some(want.as_str()), "{key}");
    }
}

/// The man page describes only what `--help` offers: a hidden flag (`--manager`, for tests
/// and packagers) is named nowhere on it, not even as "Same as --manager" under its variable.
#[test]
fn the_man_page_names_no_hidden_flag() {
    let env = Env::systemd();
    let page = env.run(&["man"]).ok().out;
    assert!(!page.contains(r"\-\-manager"), "{page}");
    let dir = env.root.join("pages");
    env.run(&["man", "--dir", &dir.display().to_string()]).ok();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = read(&path);
        assert!(!text.contains(r"\-\-manager"), "{}", path.display());
    }
}

fn readme() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
}

#[test]
fn the_readme_repeats_no_heading_and_glues_none_to_another() {
    let text = readme();
    let mut seen = std::collections::HashSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        assert!(!title.contains("##"), "two headings in one line: {line:?}");
        assert!(seen.insert(line.to_owned()), "heading repeated: {line:?}");
    }
}

/// The README's exit-code table says what the contract says exit 1 covers, `invalid_client`
/// (a client setting the server refuses) among it.
#[test]
fn the_readme_exit_1_row_names_a_refused_client() {
    let text = readme();
    let row = text
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .expect("an exit-1 row");
    for word in ["invalid_client", "redirect", "logout", "saved"] {
        assert!(row.contains(word), "the exit-1 row lacks {word}: {row}");
    }
}

/// Every directive of the sandbox drop-in is named where the README lists them.
#[test]
fn the_readme_lists_every_directive_of_the_sandbox_drop_in() {
    let text = readme();
    let dropin = read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd/claude-tokend-sandbox.conf"),
    );
    let at = text
        .find("adds the optional drop-in")
        .expect("the README describes the drop-in");
    let list = &text[at..at + 400];
    for line in dropin.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') || key == "ReadWritePaths" {
            continue;
        }
        let directive = format!("{key}={value}");
        let named = list.contains(&directive) || (value == "yes" && list.contains(key));
        assert!(named, "the README's list lacks {directive}: {list}");
    }
}
