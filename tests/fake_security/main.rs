//! A fake macOS `security` command for the end-to-end suite: the tests put it first on `PATH`
//! (there is no Mac here). It keeps generic-password items in a JSON file named by
//! `FAKE_SECURITY_DB` (see db.rs) and imitates what CONTRACT.md ("Stores: the file, and the macOS
//! Keychain") relies on, following Apple's SecurityTool sources where they say more:
//!
//! - `find-generic-password [-a A] [-s S] [-w]`: with `-w` the value and a newline, or its
//!   lowercase hex when a byte is outside 0x20..=0x7e; without `-w` the attribute listing
//!   (`keychain: "<db>"`, `"acct"`, `"svce"`, `"mdat"<timedate>=0x… "yyyymmddhhmmssZ\000"`).
//! - `add-generic-password [-U] -a A -s S (-w PASSWORD | -p PASSWORD | -X HEX)`; exit 45 when the
//!   item exists and `-U` is not given. `-A`/`-T` (access-list changes) are refused.
//! - `delete-generic-password [-a A] [-s S]`.
//! - A missing item exits 44 (errSecItemNotFound), a locked keychain 36
//!   (errSecInteractionNotAllowed: while `<db>.locked` exists, every item command fails so),
//!   `<db>.fail-writes` makes add and delete exit 1, and while `<db>.hang` exists every run waits
//!   before doing anything (a keychain asking a person to unlock it; at most 2 minutes). A bad option exits 2 with the command's
//!   usage, an unknown command 1; commands match by prefix, as in `security` itself (so an empty
//!   word runs `help`).
//! - `-i`: one command per line from stdin, read as `security` does: at most 4095 bytes per
//!   read (a longer line is cut there, and the rest is read as the next command), the newline
//!   dropped, a last line without a newline never run; each line split with `security`'s own
//!   quoting rules (`"…"` or `'…'`, a backslash escapes the next character inside quotes and
//!   out, at most 32 words); the exit status is that of the last command run (an empty line
//!   counts, as 0). A prompt goes to stderr only when stdin is a terminal.
//! - `FAKE_SECURITY_LOG`, when set: one JSON array of strings per line, appended under a flock:
//!   `["argv", args…]` per process, `["stdin", line]` per line read, `["run", words…]` and
//!   `["result", "N"]` per command, `["exit", "N"]` per process.

mod db;
mod parse;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use parse::{getopt, read_line, split_line};

const ERR_NOT_FOUND: i32 = 44;
const ERR_DUPLICATE: i32 = 45;
const ERR_LOCKED: i32 = 36;

/// The real command table's names, in its order (matching is by prefix, first match wins).
/// Only the generic-password commands and `help` are implemented.
const COMMANDS: &[&str] = &[
    "help",
    "list-keychains",
    "default-keychain",
    "login-keychain",
    "create-keychain",
    "delete-keychain",
    "lock-keychain",
    "unlock-keychain",
    "set-keychain-settings",
    "set-keychain-password",
    "show-keychain-info",
    "dump-keychain",
    "create-keypair",
    "add-generic-password",
    "add-internet-password",
    "add-certificates",
    "find-generic-password",
    "find-internet-password",
    "find-key",
    "find-certificate",
    "find-identity",
    "delete-certificate",
    "delete-identity",
    "delete-generic-password",
    "delete-internet-password",
    "set-identity-preference",
    "get-identity-preference",
    "create-db",
    "export",
    "import",
    "cms",
    "install-mds",
    "add-trusted-cert",
    "remove-trusted-cert",
    "dump-trust-settings",
    "user-trust-settings-enable",
    "trust-settings-export",
    "trust-settings-import",
    "verify-cert",
    "authorize",
    "authorizationdb",
    "execute-with-privileges",
    "leaks",
    "error",
];

const USAGE_FIND: &str = "find-generic-password [-a account] [-s service] [-w] [keychain]";
const USAGE_ADD: &str =
    "add-generic-password [-a account] [-s service] [-w password | -X hex] [-U] [keychain]";
const USAGE_DELETE: &str = "delete-generic-password [-a account] [-s service] [keychain]";

struct Ctx {
    db: PathBuf,
    log: Option<PathBuf>,
    quiet: bool,
}

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| String::from_utf8_lossy(&OsString::into_vec(a)).into_owned())
        .collect();
    let log = std::env::var_os("FAKE_SECURITY_LOG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut entry = vec!["argv".to_owned()];
    entry.extend(args.iter().cloned());
    log_entry(log.as_deref(), &entry);

    let Some(db) = std::env::var_os("FAKE_SECURITY_DB").filter(|v| !v.is_empty()) else {
        eprintln!("fake security: FAKE_SECURITY_DB is not set (the tests' harness sets it)");
        std::process::exit(1);
    };
    let db = PathBuf::from(db);
    hang_while_marked(&db);
    let mut ctx = Ctx {
        db,
        log,
        quiet: false,
    };
    let code = run_main(&mut ctx, &args);
    log_entry(ctx.log.as_deref(), &["exit".to_owned(), code.to_string()]);
    std::process::exit(code & 0xff);
}

/// Waits while the hang marker exists (polling: the test removes it, or its home, to end it).
fn hang_while_marked(db: &std::path::Path) {
    let marker = db::hang_marker(db);
    let started = std::time::Instant::now();
    while marker.exists() && started.elapsed().as_secs() < db::HANG_LIMIT_SECS {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `security [-h] [-i] [-l] [-p prompt] [-q] [-v] [command] [opt ...]`.
fn run_main(ctx: &mut Ctx, args: &[String]) -> i32 {
    let mut interactive = false;
    let mut help = false;
    let mut prompt = "security> ".to_owned();
    let parsed = match getopt(args, "hilp:qv") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("security: {e}");
            return usage();
        }
    };
    for (flag, value) in &parsed.opts {
        match flag {
            'h' => help = true,
            'i' => interactive = true,
            'p' => {
                interactive = true;
                prompt = value.clone().unwrap_or_default();
            }
            'q' => ctx.quiet = true,
            _ => {}
        }
    }
    let rest = &args[parsed.next..];
    if help {
        let mut av = vec!["help".to_owned()];
        av.extend(rest.iter().cloned());
        return cmd_help(&av);
    }
    if !rest.is_empty() {
        return execute(ctx, rest);
    }
    if interactive {
        return interactive_loop(ctx, &prompt);
    }
    usage()
}

fn usage() -> i32 {
    println!(
        "Usage: security [-h] [-i] [-l] [-p prompt] [-q] [-v] [command] [opt ...]\n    \
         -i    Run in interactive mode.\n    -q    Be less verbose.\n\
         security commands are:"
    );
    cmd_help(&["help".to_owned()]);
    2
}

fn interactive_loop(ctx: &mut Ctx, prompt: &str) -> i32 {
    // SAFETY: isatty(3) on fd 0.
    let show_prompt = unsafe { libc::isatty(0) } == 1;
    let stdin = io::stdin();
    let mut input = BufReader::new(stdin.lock());
    let mut result = 0;
    loop {
        if show_prompt {
            eprint!("{prompt}");
        }
        let Some(line) = read_line(&mut input) else {
            break;
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        log_entry(ctx.log.as_deref(), &["stdin".to_owned(), text]);
        let words = split_line(&line);
        result = execute(ctx, &words);
        if result != 0 && !ctx.quiet {
            eprintln!(
                "{}: returned {result}",
                words.first().map(String::as_str).unwrap_or("")
            );
        }
    }
    result
}

/// Runs one command (argv[0] matched by prefix against the real command table).
fn execute(ctx: &Ctx, argv: &[String]) -> i32 {
    if argv.is_empty() {
        return 0;
    }
    let mut entry = vec!["run".to_owned()];
    entry.extend(argv.iter().cloned());
    log_entry(ctx.log.as_deref(), &entry);
    let name = COMMANDS.iter().find(|c| c.starts_with(argv[0].as_str()));
    let result = match name {
        None => {
            eprintln!("security: unknown command \"{}\"", argv[0]);
            1
        }
        Some(&"help") => cmd_help(argv),
        Some(&"find-generic-password") => cmd_find(ctx, argv),
        Some(&"add-generic-password") => cmd_add(ctx, argv),
        Some(&"delete-generic-password") => cmd_delete(ctx, argv),
        Some(other) => {
            eprintln!("security: {other}: not implemented by the fake security");
            1
        }
    };
    if result == 2 {
        let usage = match name {
            Some(&"find-generic-password") => USAGE_FIND,
            Some(&"add-generic-password") => USAGE_ADD,
            Some(&"delete-generic-password") => USAGE_DELETE,
            _ => "",
        };
        eprintln!("Usage: {usage}");
    }
    log_entry(
        ctx.log.as_deref(),
        &["result".to_owned(), result.to_string()],
    );
    result
}

fn cmd_help(argv: &[String]) -> i32 {
    if argv.len() > 1 {
        for a in &argv[1..] {
            match COMMANDS.iter().find(|c| c.starts_with(a.as_str())) {
                Some(c) => println!("Usage: {c}"),
                None => {
                    eprintln!("security: {}: no such command: {a}", argv[0]);
                    return 1;
                }
            }
        }
        return 0;
    }
    for c in COMMANDS {
        println!("    {c:<17} (fake)");
    }
    0
}

/// The options of an item command, with the positional keychain names (only the fake's own
/// database is accepted).
struct ItemArgs {
    account: Option<String>,
    service: Option<String>,
    flags: Vec<char>,
    value: Option<Vec<u8>>,
}

fn item_args(ctx: &Ctx, argv: &[String], spec: &str) -> Result<ItemArgs, i32> {
    let parsed = getopt(&argv[1..], spec).map_err(|e| {
        eprintln!("{}: {e}", argv[0]);
        2
    })?;
    let mut a = ItemArgs {
        account: None,
        service: None,
        flags: Vec::new(),
        value: None,
    };
    for (c, v) in parsed.opts {
        match (c, v) {
            ('a', v) => a.account = v,
            ('s', v) => a.service = v,
            ('w' | 'p', Some(v)) => {
                if a.value.is_some() {
                    eprintln!("fake security: give the password once (-w, -p or -X)");
                    return Err(2);
                }
                a.value = Some(v.into_bytes());
            }
            ('X', Some(v)) => {
                if a.value.is_some() {
                    eprintln!("fake security: give the password once (-w, -p or -X)");
                    return Err(2);
                }
                let Some(bytes) = db::from_hex(&v) else {
                    eprintln!(
                        "security: -X: \"{}…\" is not a hex string",
                        v.chars().take(16).collect::<String>()
                    );
                    return Err(1);
                };
                a.value = Some(bytes);
            }
            ('A' | 'T', _) => {
                eprintln!(
                    "fake security: -{c} changes the item's access list; claude-tokend must \
                     never do that (Claude Code would prompt)"
                );
                return Err(2);
            }
            (c, _) => a.flags.push(c),
        }
    }
    let db_name = ctx.db.to_string_lossy();
    for k in &argv[1 + parsed.next..] {
        if *k != db_name {
            eprintln!(
                "fake security: keychain {k:?}: the fake only knows its database {db_name:?}"
            );
            return Err(2);
        }
    }
    Ok(a)
}

fn matches(i: &db::Item, a: &ItemArgs) -> bool {
    a.account.as_ref().is_none_or(|x| *x == i.account)
        && a.service.as_ref().is_none_or(|x| *x == i.service)
}

fn locked(ctx: &Ctx, what: &str) -> bool {
    if db::locked_marker(&ctx.db).exists() {
        eprintln!("security: {what}: User interaction is not allowed.");
        return true;
    }
    false
}

fn not_found() -> i32 {
    eprintln!(
        "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain."
    );
    ERR_NOT_FOUND
}

fn io_failure(e: &io::Error) -> i32 {
    eprintln!("security: fake keychain database: {e}");
    1
}

fn cmd_find(ctx: &Ctx, argv: &[String]) -> i32 {
    let a = match item_args(ctx, argv, "a:s:w") {
        Ok(a) => a,
        Err(code) => return code,
    };
    if locked(ctx, "SecKeychainSearchCopyNext") {
        return ERR_LOCKED;
    }
    let items = match db::load(&ctx.db) {
        Ok(i) => i,
        Err(e) => return io_failure(&e),
    };
    let Some(item) = items.iter().find(|i| matches(i, &a)) else {
        return not_found();
    };
    let mut out = io::stdout().lock();
    let text = if a.flags.contains(&'w') {
        if item.value.iter().all(|b| (0x20..=0x7e).contains(b)) {
            format!("{}\n", String::from_utf8_lossy(&item.value))
        } else {
            format!("{}\n", db::to_hex(&item.value))
        }
    } else {
        attributes(ctx, item)
    };
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    0
}

/// The attribute listing `security find-generic-password` prints without `-w`.
fn attributes(ctx: &Ctx, item: &db::Item) -> String {
    let timedate = |secs: u64| {
        let s = db::timedate(secs);
        let mut bytes = s.clone().into_bytes();
        bytes.push(0);
        format!("0x{}  \"{s}\\000\"", db::to_hex(&bytes).to_uppercase())
    };
    format!(
        "keychain: \"{db}\"\n\
         version: 512\n\
         class: \"genp\"\n\
         attributes:\n    \
         0x00000007 <blob>=\"{svce}\"\n    \
         0x00000008 <blob>=<NULL>\n    \
         \"acct\"<blob>=\"{acct}\"\n    \
         \"cdat\"<timedate>={cdat}\n    \
         \"crtr\"<uint32>=<NULL>\n    \
         \"cusi\"<sint32>=<NULL>\n    \
         \"desc\"<blob>=<NULL>\n    \
         \"gena\"<blob>=<NULL>\n    \
         \"icmt\"<blob>=<NULL>\n    \
         \"invi\"<sint32>=<NULL>\n    \
         \"mdat\"<timedate>={mdat}\n    \
         \"nega\"<sint32>=<NULL>\n    \
         \"prot\"<blob>=<NULL>\n    \
         \"scrp\"<sint32>=<NULL>\n    \
         \"svce\"<blob>=\"{svce}\"\n    \
         \"type\"<uint32>=<NULL>\n",
        db = ctx.db.display(),
        svce = item.service,
        acct = item.account,
        cdat = timedate(item.cdat),
        mdat = timedate(item.mdat),
    )
}

fn writes_fail(ctx: &Ctx, what: &str) -> bool {
    if db::fail_writes_marker(&ctx.db).exists() {
        eprintln!(
            "security: {what}: UNIX[Input/output error] (fake: {} exists)",
            db::fail_writes_marker(&ctx.db).display()
        );
        return true;
    }
    false
}

fn cmd_add(ctx: &Ctx, argv: &[String]) -> i32 {
    let a = match item_args(ctx, argv, "a:s:w:p:X:UAT:l:j:D:G:c:C:") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (Some(account), Some(service)) = (a.account.clone(), a.service.clone()) else {
        eprintln!("fake security: add-generic-password needs -a and -s");
        return 2;
    };
    let Some(value) = a.value.clone() else {
        eprintln!("fake security: no password given (-w, -p or -X); prompting is not supported");
        return 2;
    };
    let what = "SecKeychainItemCreateFromContent (<default>)";
    if locked(ctx, what) {
        return ERR_LOCKED;
    }
    if writes_fail(ctx, what) {
        return 1;
    }
    let update = a.flags.contains(&'U');
    let r = db::update(&ctx.db, |items| {
        let exists = items
            .iter()
            .any(|i| i.service == service && i.account == account);
        if exists && !update {
            return Err(());
        }
        db::upsert(items, &service, &account, &value);
        Ok(())
    });
    match r {
        Err(e) => io_failure(&e),
        Ok(Err(())) => {
            eprintln!("security: {what}: The specified item already exists in the keychain.");
            ERR_DUPLICATE
        }
        Ok(Ok(())) => 0,
    }
}

fn cmd_delete(ctx: &Ctx, argv: &[String]) -> i32 {
    let a = match item_args(ctx, argv, "a:s:") {
        Ok(a) => a,
        Err(code) => return code,
    };
    if locked(ctx, "SecKeychainItemDelete") {
        return ERR_LOCKED;
    }
    if writes_fail(ctx, "SecKeychainItemDelete") {
        return 1;
    }
    let r = db::update(&ctx.db, |items| {
        let i = items.iter().position(|i| matches(i, &a)).ok_or(())?;
        items.remove(i);
        Ok(())
    });
    match r {
        Err(e) => io_failure(&e),
        Ok(Err(())) => not_found(),
        Ok(Ok(())) => 0,
    }
}

/// Appends one JSON array to the log, under a flock on the log itself (many processes append).
fn log_entry(log: Option<&std::path::Path>, entry: &[String]) {
    let Some(path) = log else { return };
    let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let mut line = serde_json::to_string(entry).unwrap_or_default();
    line.push('\n');
    // SAFETY: flock(2) on a descriptor we own; released when it is closed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    let _ = f.write_all(line.as_bytes());
}
