#!/usr/bin/env bash
# Verifies the systemd user unit and its sandbox drop-in with `systemd-analyze --user verify`,
# as `claude-tokend service install` renders them (a real, absolute ExecStart=) and as shipped in
# systemd/. Fails on ANY output: systemd-analyze prints warnings such as an unknown key or a
# value it cannot parse, and still exits 0.
#
#   bash .ci/verify-units.sh                 render and verify; self-test on broken copies first
#   bash .ci/verify-units.sh FILE.service…   verify these unit files instead (same zero-output rule)
#
# CLAUDE_TOKEND_BIN names the binary to install from (default: build target/debug/claude-tokend).
# The drop-in `service install` writes beside a package's unit is rendered by a debug build with
# the test seams (CLAUDE_TOKEND_SEAM_BIN, default target/debug/claude-tokend, built with
# `cargo build --workspace` when it has none): /usr/lib cannot be written here. The package's unit
# is CLAUDE_TOKEND_PACKAGED_UNIT, default the shipped unit running /usr/bin/claude-tokend.
# Works as root in a container with no systemd running and no user manager: systemd-analyze
# runs its own manager in test mode, which needs nothing but a runtime directory.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'verify-units: %s\n' "$*"; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing systemd-analyze (apt-get install systemd)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  say "systemd-analyze not found; install it (Debian/Ubuntu: apt-get install systemd)" >&2
  exit 1
fi
# verify also opens each Documentation=man:... link with `man`, so the unit's page must be
# findable: it is generated below and put on MANPATH; without `man` every link would warn.
if ! command -v man >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing man (apt-get install man-db)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends man-db >/dev/null
  fi
fi
if ! command -v man >/dev/null 2>&1; then
  say "man not found; install it (Debian/Ubuntu: apt-get install man-db)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A user-mode manager (even systemd-analyze's test-mode one) wants $XDG_RUNTIME_DIR; a CI
# container has no login session to provide it. HOME is ours too, so %h in the units resolves here.
mkdir -m 0700 "$work/run"
export XDG_RUNTIME_DIR="$work/run"
unset NOTIFY_SOCKET CLAUDE_CONFIG_DIR CLAUDE_TOKEND_CREDENTIALS

# verify FILE...: systemd-analyze's exit code AND silence; prints what it said on failure.
verify() {
  local out rc=0
  out=$(systemd-analyze --user verify "$@" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" | sed 's/^/    /'
    return 1
  fi
}

if [ "$#" -gt 0 ]; then
  status=0
  for unit in "$@"; do
    if verify "$unit"; then say "ok: $unit"; else say "FAILED: $unit"; status=1; fi
  done
  exit "$status"
fi

bin=${CLAUDE_TOKEND_BIN:-}
if [ -z "$bin" ]; then
  cargo build --locked --quiet -p claude-tokend
  bin=target/debug/claude-tokend
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ -x "$bin" ] || { say "no executable at $bin" >&2; exit 1; }

# The pages `claude-tokend man --dir` writes, where systemd-analyze's `man` looks first.
mkdir -p "$work/man/man1"
"$bin" man --dir "$work/man/man1" >/dev/null
export MANPATH="$work/man:"

# install NAME [ARGS...]: `service install` into $work/NAME/{home,config}; prints the unit path.
install() {
  local name=$1; shift
  mkdir -p "$work/$name/home"
  HOME="$work/$name/home" XDG_CONFIG_HOME="$work/$name/config" \
    CLAUDE_TOKEND_SERVICE_MANAGER=systemd "$bin" service install "$@" >/dev/null 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; say "service install $* failed" >&2; exit 1; }
  printf '%s\n' "$work/$name/config/systemd/user/claude-tokend.service"
}

failures=0
check() { # check LABEL UNIT: must verify silently (HOME/XDG_CONFIG_HOME of that install)
  local label=$1 unit=$2 base
  base=$(dirname "$(dirname "$(dirname "$(dirname "$unit")")")")
  if HOME="$base/home" XDG_CONFIG_HOME="$base/config" verify "$unit"; then
    say "ok: $label"
  else
    say "FAILED: $label ($unit)"
    failures=$((failures + 1))
  fi
}

# Self-test first: a check that cannot fail proves nothing (an old systemd-analyze, a missing
# runtime directory or a changed message format must not turn into a silent pass).
canary_src=$(install canary)
canary_dir=$(dirname "$canary_src")
for breakage in 'NoSuchDirective=yes' 'WatchdogSec=banana' 'RestrictAddressFamilies=AF_BOGUS' \
  'Documentation=man:claude-tokend-no-such-page(1)'; do
  case $breakage in
    Documentation=*) anchor='^Documentation=.*' ;; # [Unit]: a page man cannot find
    *) anchor='^Type=notify$' ;;                   # [Service]
  esac
  sed "s/$anchor/&\\n$breakage/" "$canary_src" >"$canary_dir/broken.service"
  grep -qxF "$breakage" "$canary_dir/broken.service" || { say "self-test: could not inject $breakage" >&2; exit 1; }
  if HOME="$work/canary/home" XDG_CONFIG_HOME="$work/canary/config" verify "$canary_dir/broken.service" >/dev/null; then
    say "self-test FAILED: a unit with '$breakage' passed verification, so this check proves nothing" >&2
    exit 1
  fi
done
rm -f "$canary_dir/broken.service"
say "self-test: a unit with a broken directive or a missing man page fails, as it should"

# 1. What `service install` writes with the defaults.
unit=$(install plain)
check "rendered unit, default settings" "$unit"

# 2. With every carried setting, awkward paths (a space, a %), and the sandbox drop-in, which
#    systemd-analyze loads from claude-tokend.service.d/ next to the unit.
mkdir -p "$work/odd/state dir/claude 50%"
unit=$(CLAUDE_CONFIG_DIR="$work/odd/state dir/claude 50%" install odd --sandbox \
  --credentials "$work/odd/my creds/50%.json" \
  --token-url https://console.anthropic.com/v1/oauth/token --refresh-before 20m \
  --client-id 00000000-0000-0000-0000-000000000000 --user-agent 'claude-cli/2.1 (external, cli)')
grep -q '^ReadWritePaths=' "$(dirname "$unit")/claude-tokend.service.d/sandbox.conf"
grep -q '^Environment=.*CLAUDE_TOKEND_CREDENTIALS=' "$unit"
check "rendered unit with settings, odd paths and the sandbox drop-in" "$unit"

# 3. The files exactly as shipped: ExecStart=%h/.cargo/bin/claude-tokend and ReadWritePaths=%h.
mkdir -p "$work/shipped/home/.cargo/bin" "$work/shipped/config/systemd/user/claude-tokend.service.d"
ln -s "$bin" "$work/shipped/home/.cargo/bin/claude-tokend"
cp systemd/claude-tokend.service "$work/shipped/config/systemd/user/"
cp systemd/claude-tokend-sandbox.conf "$work/shipped/config/systemd/user/claude-tokend.service.d/sandbox.conf"
check "systemd/ as shipped, with the drop-in" "$work/shipped/config/systemd/user/claude-tokend.service"

# 4. Beside a package's unit (CONTRACT.md "Packages"), `service install` writes only a drop-in
#    (claude-tokend.service.d/install.conf); systemd reads the two together. The package's unit
#    runs /usr/bin/claude-tokend, which need not exist here: the drop-in's ExecStart= replaces it,
#    so verification also proves the replacement took (a second ExecStart= is refused).
seam_bin=${CLAUDE_TOKEND_SEAM_BIN:-target/debug/claude-tokend}
if ! grep -aqF CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR "$seam_bin" 2>/dev/null; then
  cargo build --locked --quiet --workspace
  seam_bin=target/debug/claude-tokend
fi
grep -aqF CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR "$seam_bin" \
  || { say "$seam_bin has no test seams: cannot render the drop-in for a packaged unit" >&2; exit 1; }
pkg="$work/packaged"
mkdir -p "$pkg/usr-lib" "$pkg/home"
if [ -n "${CLAUDE_TOKEND_PACKAGED_UNIT:-}" ]; then
  cp "$CLAUDE_TOKEND_PACKAGED_UNIT" "$pkg/usr-lib/claude-tokend.service"
else
  # The packages' own rule for their unit (one place says how the template becomes it).
  bash packaging/systemd-unit.sh /usr/bin/claude-tokend >"$pkg/usr-lib/claude-tokend.service"
fi
grep -qx 'ExecStart=/usr/bin/claude-tokend' "$pkg/usr-lib/claude-tokend.service" \
  || { say "the packaged unit does not run /usr/bin/claude-tokend" >&2; exit 1; }
mkdir -p "$work/odd/packaged 50%"
HOME="$pkg/home" XDG_CONFIG_HOME="$pkg/config" CLAUDE_TOKEND_TEST_PACKAGED_UNIT_DIR="$pkg/usr-lib" \
  CLAUDE_TOKEND_SERVICE_MANAGER=systemd "$(cd "$(dirname "$seam_bin")" && pwd)/$(basename "$seam_bin")" \
  service install --sandbox --credentials "$work/odd/packaged 50%/a.json" --config-dir "$work/odd/b\$x" \
  --refresh-before 20m >/dev/null 2>"$work/packaged.err" \
  || { cat "$work/packaged.err" >&2; say "service install beside a packaged unit failed" >&2; exit 1; }
dropin="$pkg/config/systemd/user/claude-tokend.service.d/install.conf"
[ -f "$dropin" ] && [ ! -e "$pkg/config/systemd/user/claude-tokend.service" ] \
  || { say "service install beside a packaged unit did not write only a drop-in" >&2; exit 1; }
# Self-test: without the line that empties ExecStart=, the pair must fail to verify.
cp "$dropin" "$work/install.conf.good"
sed '/^ExecStart=$/d' "$work/install.conf.good" >"$dropin"
if HOME="$pkg/home" XDG_CONFIG_HOME="$pkg/config" verify "$pkg/usr-lib/claude-tokend.service" >/dev/null; then
  say "self-test FAILED: a drop-in adding a second ExecStart= passed verification" >&2
  exit 1
fi
cp "$work/install.conf.good" "$dropin"
if HOME="$pkg/home" XDG_CONFIG_HOME="$pkg/config" verify "$pkg/usr-lib/claude-tokend.service"; then
  say "ok: the packaged unit with service install's drop-ins (settings, sandbox)"
else
  say "FAILED: the packaged unit with service install's drop-ins ($dropin)"
  failures=$((failures + 1))
fi

if [ "$failures" -ne 0 ]; then
  say "$failures unit check(s) failed: systemd-analyze printed the lines above"
  exit 1
fi
say "all units verify with zero warnings"
