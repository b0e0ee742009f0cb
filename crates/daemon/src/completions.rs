//! `claude-tokend completions <shell>` and `claude-tokend man`: shell completions (clap_complete)
//! and the man page (clap_mangen), both generated from the clap definition in `cli.rs`, so they
//! cannot drift from `--help`. Both print to stdout, for the user (or a package build) to save.
//! What the generators get wrong for this program is mended here, after generation: bash's
//! labels for a hyphenated name, hidden flags offered for completion, and the man page's
//! missing ENVIRONMENT, EXIT STATUS and SEE ALSO. It reads no settings and runs nothing.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::{exit, show};

const BIN: &str = "claude-tokend";

pub fn completions(shell: Shell) -> u8 {
    let mut cmd = plain_hidden(Cli::command());
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    if shell == Shell::Bash {
        script = fix_bash_names(&script);
    }
    for flag in hidden_flags(&cmd) {
        script = without_flag(shell, &script, &flag);
    }
    emit(script.as_bytes())
}

/// clap_complete's bash script finds the subcommand typed so far by building a name in `cmd`
/// (`claude__tokend__subcmd__service`: the program name with `-` as `__`) and then switches on
/// it, but it spells the program name in the `case` labels with `-` as `__subcmd__`
/// (`claude__subcmd__tokend__subcmd__service`), so for a hyphenated program no label after the
/// top level ever matches and nothing is completed after a subcommand. The labels are made to
/// spell it as `cmd` does; a script without the mix-up passes through unchanged.
fn fix_bash_names(script: &str) -> String {
    script.replace(&BIN.replace('-', "__subcmd__"), &BIN.replace('-', "__"))
}

/// The long flags hidden from `--help` (`--manager`, which tests and packagers use), anywhere in
/// the command tree. The generators list hidden arguments like any other.
fn hidden_flags(cmd: &clap::Command) -> Vec<String> {
    let mut found: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_hide_set())
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for sub in cmd.get_subcommands() {
        for flag in hidden_flags(sub) {
            if !found.contains(&flag) {
                found.push(flag);
            }
        }
    }
    found
}

/// The definition with every hidden argument that takes a value made a plain string: the
/// generators then give it one line (fish spells a list of values over several lines, which
/// dropping the flag's line would cut in two and leave the file unparsable), so
/// [`without_flag`] removes it whole.
fn plain_hidden(cmd: clap::Command) -> clap::Command {
    let hidden: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_hide_set() && a.get_action().takes_values())
        .map(|a| a.get_id().to_string())
        .collect();
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut cmd = cmd;
    for id in hidden {
        cmd = cmd.mut_arg(id, |a| {
            a.value_parser(clap::builder::NonEmptyStringValueParser::new())
        });
    }
    for name in subs {
        cmd = cmd.mut_subcommand(name, plain_hidden);
    }
    cmd
}

/// `script` without `--long` offered: bash lists flags as words of `opts="..."` lines and
/// completes a flag's value in a `--long)` case block; the other shells give each flag lines of
/// its own (fish spells it `-l long`).
fn without_flag(shell: Shell, script: &str, long: &str) -> String {
    let flag = format!("--{long}");
    let mut out = String::with_capacity(script.len());
    let mut in_case_block = false;
    for line in script.split_inclusive('\n') {
        let trimmed = line.trim();
        if shell == Shell::Bash {
            if in_case_block {
                in_case_block = trimmed != ";;";
                continue;
            }
            if trimmed == format!("{flag})") {
                in_case_block = true;
                continue;
            }
            if let Some(start) = line.find("opts=\"")
                && let Some(len) = line[start + 6..].find('"')
            {
                let words = &line[start + 6..start + 6 + len];
                let kept: Vec<&str> = words.split(' ').filter(|w| *w != flag).collect();
                out.push_str(&line[..start + 6]);
                out.push_str(&kept.join(" "));
                out.push_str(&line[start + 6 + len..]);
                continue;
            }
            out.push_str(line);
        } else {
            let spelled = if shell == Shell::Fish {
                format!(" -l {long}")
            } else {
                flag.clone()
            };
            if !mentions(line, &spelled) {
                out.push_str(line);
            }
        }
    }
    out
}

/// Whether `line` holds `token` as a whole word (not `--manager` in `--manager-x`).
fn mentions(line: &str, token: &str) -> bool {
    line.match_indices(token).any(|(at, _)| {
        !line[at + token.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The roff source of `claude-tokend(1)` on stdout, or every page (one per command, as the
/// main page's SEE ALSO names them) written into `dir`.
pub fn man(dir: Option<&Path>) -> u8 {
    let cmd = man_command();
    let main = match main_page(&cmd) {
        Ok(page) => page,
        Err(e) => {
            eprintln!("claude-tokend: cannot render the man page: {e}");
            return exit::FAILURE;
        }
    };
    let Some(dir) = dir else {
        return emit(&main);
    };
    // create_dir_all on a file says only "File exists": say what --dir wants instead.
    if let Ok(meta) = std::fs::metadata(dir)
        && !meta.is_dir()
    {
        eprintln!(
            "claude-tokend: {} is not a directory: man --dir takes the directory to write the \
             pages into (it is created when missing); without --dir the page goes to stdout",
            dir.display()
        );
        return exit::FAILURE;
    }
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(format!("{BIN}.1")), &main))
        .and_then(|()| {
            for sub in pages(&cmd) {
                clap_mangen::Man::new(sub.clone()).generate_to(dir)?;
            }
            Ok(())
        });
    match written {
        Ok(()) => {
            println!("Wrote the man pages into {}", dir.display());
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "claude-tokend: cannot write the man pages into {}: {e}",
                dir.display()
            );
            exit::FAILURE
        }
    }
}

/// The definition the pages are made from: built (so each subcommand knows its full name,
/// `claude-tokend-service-install`) and without clap's `help` subcommand, which has no page:
/// listing it would name a `claude-tokend-help(1)` that is never written.
fn man_command() -> clap::Command {
    fn no_help(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        let mut cmd = cmd.disable_help_subcommand(true);
        for name in names {
            cmd = cmd.mut_subcommand(name, no_help);
        }
        cmd
    }
    let mut cmd = no_help(Cli::command());
    cmd.build();
    cmd
}

/// Every command below the top that gets a page of its own, in the order `--help` lists them.
fn pages(cmd: &clap::Command) -> Vec<&clap::Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push(sub);
        out.extend(pages(sub));
    }
    out
}

/// `claude-tokend(1)`: clap_mangen's sections, except the catch-all it files `after_help` (the
/// exit codes) under, plus ENVIRONMENT, EXIT STATUS and SEE ALSO.
fn main_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    // Each piece starts with roff's apostrophe preamble; once, at the top, is enough.
    let preamble = out[..find(&out, b".TH").unwrap_or(0)].to_vec();
    let piece = |out: &mut Vec<u8>, render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        render(&mut buf)?;
        out.extend_from_slice(buf.strip_prefix(preamble.as_slice()).unwrap_or(&buf));
        Ok::<(), std::io::Error>(())
    };
    piece(&mut out, &|w| man.render_name_section(w))?;
    piece(&mut out, &|w| man.render_synopsis_section(w))?;
    piece(&mut out, &|w| man.render_description_section(w))?;
    let mut own = String::new();
    para(
        &mut own,
        "With no command, runs the daemon in the foreground: what systemd and launchd start.",
    );
    out.extend_from_slice(own.as_bytes());
    piece(&mut out, &|w| man.render_options_section(w))?;
    piece(&mut out, &|w| man.render_subcommands_section(w))?;
    let mut own = String::new();
    environment_section(&mut own, cmd);
    exit_status_section(&mut own);
    rules_section(&mut own);
    see_also_section(&mut own, cmd);
    out.extend_from_slice(own.as_bytes());
    piece(&mut out, &|w| man.render_version_section(w))?;
    Ok(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The variables read other than through a flag's `env`, and what the program does with each.
const OTHER_VARIABLES: &[(&str, &str)] = &[
    (
        "CLAUDE_CONFIG_DIR",
        "Claude Code's configuration directory: the credentials file is \
         $CLAUDE_CONFIG_DIR/.credentials.json unless --credentials names one, and the Keychain \
         item's service gets a suffix from its SHA-256 (as Claude Code names it). An empty one \
         counts as unset. service install carries it into the service.",
    ),
    (
        "CLAUDE_SECURESTORAGE_CONFIG_DIR",
        "Claude Code's own, undocumented: when set, it wins over CLAUDE_CONFIG_DIR for the \
         credentials file, its locks and the Keychain item's suffix; set but empty means \
         ~/.claude/.credentials.json and no suffix. service install carries it.",
    ),
    (
        "CLAUDE_TOKEND_CONFIG_DIRS",
        "Several logins: a :-separated list of Claude Code config directories, each meaning the \
         login as with CLAUDE_CONFIG_DIR=DIR (its file or its Keychain item). Used when no \
         --credentials or --config-dir is given. service install carries it.",
    ),
    (
        "CLAUDE_TOKEND_MIRRORS",
        "The access-only copies (mirrors) of the single login: a :-separated list of \
         directories, ~ expanded, each kept as DIR/.credentials.json with the login's access \
         token and never its refresh token. --mirror flags replace it; with several logins it \
         is an error (give each login its --mirror). service install carries it.",
    ),
    (
        "CLAUDE_CODE_OAUTH_TOKEN",
        "Claude Code's: when set, Claude Code uses that token and ignores the stored login; \
         doctor fails on it (it is never read for its value).",
    ),
    (
        "ANTHROPIC_API_KEY",
        "Claude Code's: when set, Claude Code may use the API key instead of the stored login; \
         doctor warns about it.",
    ),
    (
        "ANTHROPIC_AUTH_TOKEN",
        "Claude Code's: like ANTHROPIC_API_KEY, a credential that may take the stored login's \
         place; doctor warns about it.",
    ),
    (
        "PATH",
        "Where security (the Keychain store), sh (--notify-cmd), notify-send or osascript \
         (--notify desktop), and systemctl or launchctl (service, doctor) are found.",
    ),
    (
        "USER",
        "The Keychain item's account (claude-code-user when unset or not a plain name).",
    ),
    (
        "HOME",
        "The credentials file is ~/.claude/.credentials.json when nothing else names one; the \
         service files go under it.",
    ),
    (
        "XDG_CONFIG_HOME",
        "service install (systemd) writes the unit into $XDG_CONFIG_HOME/systemd/user when it is \
         an absolute path, else into ~/.config/systemd/user.",
    ),
    (
        "RUST_LOG",
        "A log filter (tracing's EnvFilter syntax, such as info or claude_tokend=debug); when \
         set and not empty it wins over -v and -q.",
    ),
    (
        "JOURNAL_STREAM",
        "Set by systemd when stderr goes to the journal, which stamps each line itself: the \
         daemon then leaves out its own timestamps.",
    ),
    (
        "NOTIFY_SOCKET",
        "Set by systemd for a Type=notify service: the daemon reports READY, STATUS and STOPPING \
         there.",
    ),
    (
        "WATCHDOG_USEC",
        "With WATCHDOG_PID, set by systemd for WatchdogSec=: the daemon pings at half this \
         interval.",
    ),
    (
        "DISPLAY",
        "login opens a browser with xdg-open only when DISPLAY or WAYLAND_DISPLAY is set (on \
         macOS it always uses open).",
    ),
    ("WAYLAND_DISPLAY", "See DISPLAY."),
    (
        "HTTPS_PROXY",
        "An http:// proxy for the requests to the endpoints, used through CONNECT (also \
         https_proxy, ALL_PROXY).",
    ),
    ("NO_PROXY", "Hosts reached without the proxy."),
    (
        "SSL_CERT_FILE",
        "A PEM file of the certificate authorities to trust instead of the system's (Linux); \
         SSL_CERT_DIR names a directory of them.",
    ),
];

/// Every variable a flag reads (from the clap definition, so none is missed), then the rest.
fn environment_section(out: &mut String, cmd: &clap::Command) {
    fn flag_variables(cmd: &clap::Command, out: &mut Vec<(String, String)>) {
        for arg in cmd.get_arguments() {
            let Some(var) = arg.get_env() else { continue };
            let var = var.to_string_lossy().into_owned();
            if out.iter().any(|(v, _)| *v == var) {
                continue;
            }
            let mut text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('.') {
                text.push('.');
            }
            // A hidden flag (`--manager`) is not offered anywhere else, so not here either.
            if let Some(long) = arg.get_long().filter(|_| !arg.is_hide_set()) {
                text.push_str(&format!(" Same as --{long}."));
            }
            out.push((var, text));
        }
        for sub in cmd.get_subcommands() {
            flag_variables(sub, out);
        }
    }
    let mut vars = Vec::new();
    flag_variables(cmd, &mut vars);
    out.push_str(".SH ENVIRONMENT\n");
    para(
        out,
        "A setting from the environment is checked like its flag and reported under the \
         variable's name; an empty CLAUDE_TOKEND_* variable (or ANTHROPIC_CLIENT_ID) counts as \
         unset, and a flag wins over its variable.",
    );
    for (var, text) in vars
        .iter()
        .map(|(v, t)| (v.as_str(), t.as_str()))
        .chain(OTHER_VARIABLES.iter().copied())
    {
        tagged(out, var, text);
    }
}

/// The contract's exit codes, and the one `service status` adds.
const EXIT_CODES: &[(&str, &str)] = &[
    (
        "0",
        "Done: a valid access token is stored, fresh or refreshed (status: a token that has not \
         expired; logout: no login is stored now; service status: the service is running; doctor: \
         no check failed).",
    ),
    (
        "1",
        "status: the token has expired; other failures not listed here (a refused logout, a \
         login state mismatch, a client setting the server refuses, new tokens that could not be \
         saved; service: a step that failed, a hand-edited file, a service not installed or not \
         running; doctor: a check failed).",
    ),
    (
        "2",
        "A bad command line or setting, from a flag or the environment alike (an unknown flag, a \
         bad duration, a refused http URL).",
    ),
    (
        "69",
        "service status: the service manager could not be asked (no user bus for systemctl \
         --user, or no systemctl or launchctl at all); the message says what to run.",
    ),
    (
        "75",
        "A temporary failure after the retry budget, an expired token that the one-minute floor \
         keeps from being refreshed yet, or a refresh token another claude-tokend spent and has \
         not saved the answer of yet: try again later (cron may).",
    ),
    (
        "77",
        "The server refused the grant, or no login at all, or a due login without a refresh \
         token (an access-only copy): a new login is needed.",
    ),
    (
        "78",
        "The credentials file (or Keychain item) is missing, unreadable or malformed, or the \
         item is too big for security to write back; the message names the path or item.",
    ),
    (
        "128+N",
        "--once, refresh, token and login stopped by signal N (130 SIGINT, 143 SIGTERM, 129 \
         SIGHUP), after saving any answer that was in flight.",
    ),
];

fn exit_status_section(out: &mut String) {
    out.push_str(".SH \"EXIT STATUS\"\n");
    for (code, text) in EXIT_CODES {
        tagged(out, code, text);
    }
}

/// The rules that keep a refresh from wasting a token or flooding the endpoint, and the
/// features a reader of the page should know exist (CONTRACT.md "Never waste, never hammer",
/// "Stores", "Several logins", "Telling the user").
const RULES: &[(&str, &str)] = &[
    (
        "Compare-and-swap",
        "New tokens are written only if the store still holds the refresh token that was sent \
         (or blank tokens), re-read under Claude Code's .storage-write.lock; otherwise another \
         writer won and nothing is written. Every key this program does not own is kept.",
    ),
    (
        "A grant in hand is kept",
        "Tokens the server issued that could not be saved are kept and only their save is \
         retried; the spent refresh token is never sent again. A store that no longer parses is \
         first copied, unchanged, to <file>.malformed-<UTC time>.",
    ),
    (
        "A floor under the refresh rate",
        "No request replaces a grant this program obtained less than 60 seconds ago, whatever \
         the settings, signals or answers (only the refresh command is exempt). A grant that \
         lives no longer than --refresh-before is refreshed at half its lifetime; a lead over \
         4 hours is refused.",
    ),
    (
        "Backoff",
        "Temporary failures back off with full jitter up to 5 minutes, on the monotonic clock; \
         Retry-After is honoured up to 1 hour. A refused refresh token is not sent again until \
         the login's own fields change.",
    ),
    (
        "Claude Code's locks",
        "The lock directories .oauth_refresh.lock and <config dir>.lock are taken as Claude \
         Code takes them, heartbeated every 5 s while held, and a live one is waited for; \
         one-shot commands outwait a fresh lock to its 60 s takeover.",
    ),
    (
        "Stores",
        "--store file uses the credentials file; --store keychain the macOS Keychain item Claude \
         Code keeps (through the security command); auto picks the Keychain item on macOS when \
         it exists, the file elsewhere.",
    ),
    (
        "Several logins",
        "--config-dir and --credentials may be repeated (or CLAUDE_TOKEND_CONFIG_DIRS set): one \
         daemon keeps every login fresh, each on its own; --once, refresh and status act on all \
         of them and exit with the worst code; token, login and logout need exactly one.",
    ),
    (
        "Mirrors",
        "--mirror DIR keeps DIR/.credentials.json as an access-only copy of the login before it \
         on the command line (never its refresh token or its MCP tokens), for Claude Code in a \
         container or on another machine (CLAUDE_CONFIG_DIR=DIR there). The daemon rewrites it \
         within a second of every change of the login's access token; --once and refresh bring \
         it up to date on every run. A mirror that would overwrite a real login is refused \
         (exit 2). --mirror-cmd publishes the same copy elsewhere, on its stdin.",
    ),
    (
        "Notifications",
        "The daemon runs --notify-cmd (and, with --notify desktop, notify-send or osascript) \
         for login-needed, login-expiring, refresh-failing and recovered; never with a token.",
    ),
];

fn rules_section(out: &mut String) {
    out.push_str(".SH \"HOW A REFRESH STAYS SAFE\"\n");
    for (tag, text) in RULES {
        tagged(out, tag, text);
    }
}

/// The pages `man --dir` writes, taken from the same walk that writes them.
fn see_also_section(out: &mut String, cmd: &clap::Command) {
    out.push_str(".SH \"SEE ALSO\"\n");
    let names: Vec<String> = pages(cmd)
        .iter()
        .map(|p| {
            let name = p.get_display_name().unwrap_or_else(|| p.get_name());
            format!("\\fB{}\\fR(1)", escape(name))
        })
        .collect();
    out.push_str(&names.join(",\n"));
    out.push('\n');
}

/// A `.TP` entry: the tag in bold, then its text.
fn tagged(out: &mut String, tag: &str, text: &str) {
    out.push_str(".TP\n");
    out.push_str(&format!("\\fB{}\\fR\n", escape(tag)));
    out.push_str(&escape(text));
    out.push('\n');
}

fn para(out: &mut String, text: &str) {
    out.push_str(".PP\n");
    out.push_str(&escape(text));
    out.push('\n');
}

/// Text as roff prints it literally: `\` and `-` escaped (a bare `-` may become a hyphen that
/// cannot be searched for or pasted), `'` through the preamble's Aq string, and a line that
/// would start with a control character guarded.
fn escape(text: &str) -> String {
    let s = text
        .replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Generated into memory first, then written: the generators panic on a write error, and
/// `claude-tokend man | head` closing the pipe early is no error at all.
fn emit(bytes: &[u8]) -> u8 {
    match show::emit(bytes) {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}
