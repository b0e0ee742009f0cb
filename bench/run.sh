#!/usr/bin/env bash
# The benchmark anyone can run: `bash bench/run.sh` from a clean checkout (it builds what it needs).
# Prints, from one run on this machine, side by side for claude-tokend and for the seed's
# TypeScript refresh sketch run on Node (bench/seed-refresh.mjs, a faithful plain-JS port):
#   - `--once` on a fresh token (the whole process: nothing to do but read the file),
#   - `--once` that refreshes against a loopback token endpoint (bench/token_endpoint.py),
#   - (claude-tokend only) `token` on a fresh token, which must be as fast as `--once`, and
#     `status` and `doctor --offline` (one login, no service manager asked) beside it,
# and for claude-tokend alone: the idle daemon's RSS and CPU ticks over 10 s (1 login, 8 logins,
# and 8 logins each with a --mirror), the release binary's size. Each case is checked once before it is timed (a fresh run leaves the token, a
# refresh run replaces it), so both programs are timed doing the same work.
#
# Needs: cargo, python3 (loopback endpoint, timer). Optional: node (18+) for the seed column;
# without it those rows are skipped with a message.
# Settings (environment): RUNS (fresh-token runs, default 200), REFRESH_RUNS (default 50),
# BENCH_PROFILES=1 also builds the binary without the release profile's lto / codegen-units=1 /
# strip / panic=abort (into target/bench-profile-off) and prints both sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}
REFRESH_RUNS=${REFRESH_RUNS:-50}

command -v python3 >/dev/null || { echo "bench/run.sh needs python3 (the loopback endpoint and the timer)" >&2; exit 1; }
NODE=$(command -v node || true)
if [ -n "$NODE" ] && ! "$NODE" -e 'process.exit(typeof fetch === "function" ? 0 : 1)' 2>/dev/null; then
    echo "note: $NODE has no global fetch (Node 18+ needed); skipping the seed (Node) rows" >&2
    NODE=
elif [ -z "$NODE" ]; then
    echo "note: node not found; skipping the seed (Node) rows. Install Node 18+ to compare with the seed." >&2
fi

echo "building the release binary..." >&2
cargo build --release --locked -q
BIN=$PWD/target/release/claude-tokend
# Optional: the same binary without the release profile's settings. Built here, before HOME is
# pointed at the scratch directory (rustup finds its toolchains through HOME).
if [ "${BENCH_PROFILES:-0}" = 1 ]; then
    echo "building without the release profile's lto / codegen-units / strip / panic (BENCH_PROFILES=1)..." >&2
    OFF_DIR=$PWD/target/bench-profile-off
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_PANIC=unwind \
        cargo build --release --locked -q --target-dir "$OFF_DIR"
    OFF=$OFF_DIR/release/claude-tokend
fi
RUSTC_VERSION=$(rustc --version | cut -d" " -f1-2)
SEED=$PWD/bench/seed-refresh.mjs

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -m 700 "$WORK/.claude"
CREDS=$WORK/.claude/.credentials.json
write_creds() { bash bench/write_creds.sh "$CREDS" "$1"; }

python3 bench/token_endpoint.py "$WORK/port" &
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "the loopback token endpoint did not start" >&2; exit 1; }
export CLAUDE_TOKEND_TOKEN_URL="http://127.0.0.1:$(cat "$WORK/port")/v1/oauth/token"
export HOME=$WORK
unset CLAUDE_CONFIG_DIR CLAUDE_TOKEND_CREDENTIALS CLAUDE_TOKEND_REFRESH_BEFORE

T="python3 bench/time_cmd.py"
median() { awk '{print $2}' <<<"$1"; }   # "median 1.61 ms, mean 1.70 ms" -> 1.61
short() { awk '{printf "%s ms (mean %s)", $2, $5}' <<<"$1"; }   # -> "1.61 ms (mean 1.70)"
size() { stat -c %s "$1"; }
mb() { awk -v s="$1" 'BEGIN{printf "%.2f MB", s/1e6}'; }

# check fresh|refresh CMD...: one untimed run, and proof that it did the expected work.
# Prints whether the keys the program does not own (mcpOAuth, subscriptionType) survived.
check() {
    local mode=$1; shift
    if [ "$mode" = fresh ]; then write_creds 28800; else write_creds 60; fi
    local before; before=$(cat "$CREDS")
    "$@" >/dev/null 2>"$WORK/err" || { echo "$* failed:" >&2; cat "$WORK/err" >&2; exit 1; }
    if [ "$mode" = fresh ]; then
        [ "$(cat "$CREDS")" = "$before" ] || { echo "$*: a fresh-token run changed the file" >&2; exit 1; }
    else
        ! grep -q benchaccess "$CREDS" || { echo "$*: the refresh run did not refresh" >&2; exit 1; }
        if grep -q mcpOAuth "$CREDS" && grep -q subscriptionType "$CREDS"; then echo yes; else echo "NO (lost)"; fi
    fi
}

row() { printf '%-30s %-36s %s\n' "$1" "$2" "$3"; }

# --- claude-tokend ----------------------------------------------------------------------------
check fresh "$BIN" --once >/dev/null
ct_keys=$(check refresh "$BIN" --once)
write_creds 28800
ct_true=$($T "$RUNS" -- /bin/true)
ct_fresh=$($T "$RUNS" -- "$BIN" --once)
ct_token=$($T "$RUNS" -- "$BIN" token)
# `status`, and `doctor --offline` on the same login with no service manager asked: a PATH
# without systemctl or launchctl, where doctor says it could not ask them (a warning) and exits
# 0. doctor is checked once first: it succeeds and leaves the file as it was.
ct_status=$($T "$RUNS" -- "$BIN" status)
NO_MANAGER=$WORK/no-service-manager
mkdir "$NO_MANAGER"
before=$(cat "$CREDS")
env PATH="$NO_MANAGER" "$BIN" doctor --offline >"$WORK/doctor.out" 2>&1 \
    || { echo "doctor --offline failed:" >&2; cat "$WORK/doctor.out" >&2; exit 1; }
grep -q "no systemctl on PATH\|no launchctl on PATH" "$WORK/doctor.out" \
    || { echo "doctor --offline asked a service manager:" >&2; cat "$WORK/doctor.out" >&2; exit 1; }
[ "$(cat "$CREDS")" = "$before" ] || { echo "doctor --offline changed the file" >&2; exit 1; }
# The interpreter itself (a pyenv shim on PATH is a script that needs PATH).
PY=$(python3 -c 'import sys; print(sys.executable)')
ct_doctor=$(PATH=$NO_MANAGER "$PY" bench/time_cmd.py "$RUNS" -- "$BIN" doctor --offline)
ct_refresh=$($T "$REFRESH_RUNS" --setup "bash bench/write_creds.sh '$CREDS' 60" -- "$BIN" --once)

# --- the seed on Node -------------------------------------------------------------------------
if [ -n "$NODE" ]; then
    check fresh "$NODE" "$SEED" >/dev/null
    nd_keys=$(check refresh "$NODE" "$SEED")
    write_creds 28800
    nd_floor=$($T "$RUNS" -- "$NODE" -e 0)
    nd_fresh=$($T "$RUNS" -- "$NODE" "$SEED")
    nd_refresh=$($T "$REFRESH_RUNS" --setup "bash bench/write_creds.sh '$CREDS' 60" -- "$NODE" "$SEED")
else
    nd_keys="(skipped: no node)"; nd_floor=$nd_keys; nd_fresh=$nd_keys; nd_refresh=$nd_keys
fi

# --- the idle daemon --------------------------------------------------------------------------
write_creds 28800
"$BIN" -q &
PID=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
t0=$(ticks); sleep 10; t1=$(ticks)
# Wake-ups: context switches of every thread over 65 s (the loop wakes at least once a
# minute), 1 login vs 8. The RSS is read after that window, so it includes what a wake-up
# touches, not only what start-up left.
switches() { cat /proc/"$1"/task/*/status | awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}'; }
w0=$(switches $PID); sleep 65; w1=$(switches $PID)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
kill -TERM $PID; wait $PID || true

# --- the idle daemon with 8 logins (one config directory each) --------------------------------
ARGS=()
for i in 1 2 3 4 5 6 7 8; do
    mkdir -m 700 -p "$WORK/login$i"
    bash bench/write_creds.sh "$WORK/login$i/.credentials.json" 28800
    ARGS+=(--config-dir "$WORK/login$i")
done
"$BIN" -q "${ARGS[@]}" &
PID=$!
sleep 2
t8_0=$(ticks); sleep 10; t8_1=$(ticks)
w8_0=$(switches $PID); sleep 65; w8_1=$(switches $PID)
rss8=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
kill -TERM $PID; wait $PID || true

# --- the idle daemon with 8 logins and 8 mirrors (one access-only copy per login) -------------
# The same eight logins, each with a --mirror directory the daemon creates (their parent
# exists). Checked once before it is measured: every mirror holds its login's access token and
# no refresh token.
ARGS=()
for i in 1 2 3 4 5 6 7 8; do
    bash bench/write_creds.sh "$WORK/login$i/.credentials.json" 28800
    ARGS+=(--config-dir "$WORK/login$i" --mirror "$WORK/mirror$i")
done
"$BIN" -q "${ARGS[@]}" &
PID=$!
mirrored() {
    local i
    for i in 1 2 3 4 5 6 7 8; do
        grep -q benchaccess "$WORK/mirror$i/.credentials.json" 2>/dev/null || return 1
    done
}
for _ in $(seq 100); do mirrored && break; kill -0 $PID 2>/dev/null || break; sleep 0.1; done
if ! mirrored; then
    echo "the daemon with 8 logins and --mirror did not write its 8 mirrors within 10 s" >&2
    exit 1
fi
if grep -l benchrefresh "$WORK"/mirror*/.credentials.json >&2; then
    echo "a mirror holds a refresh token" >&2
    exit 1
fi
sleep 2
tm_0=$(ticks); sleep 10; tm_1=$(ticks)
wm_0=$(switches $PID); sleep 65; wm_1=$(switches $PID)
rssm=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
kill -TERM $PID; wait $PID || true

# --- report -----------------------------------------------------------------------------------
echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores," \
     "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "tools:   $RUSTC_VERSION, ${NODE:+node $("$NODE" --version), }python $(python3 -c 'import platform; print(platform.python_version())')"
echo
row "" "claude-tokend" "seed sketch on Node"
nd() { if [ -n "$NODE" ]; then short "$1"; else echo "$1"; fi; }
row "startup floor (median)" "$(short "$ct_true") /bin/true" "$(nd "$nd_floor")${NODE:+ node -e 0}"
row "--once, fresh token" "$(short "$ct_fresh")" "$(nd "$nd_fresh")"
row "token, fresh token" "$(short "$ct_token")" ""
row "status, fresh token" "$(short "$ct_status")" ""
row "doctor --offline, one login" "$(short "$ct_doctor")" ""
row "--once, refresh (loopback)" "$(short "$ct_refresh")" "$(nd "$nd_refresh")"
row "other keys kept by a refresh" "$ct_keys" "$nd_keys"
echo "(fresh: $RUNS runs each; refresh: $REFRESH_RUNS runs each, the file rewritten untimed before each)"
echo
fresh_ms=$(median "$ct_fresh")
if [ -n "$NODE" ]; then
    awk -v a="$fresh_ms" -v b="$(median "$nd_fresh")" -v r="$(median "$ct_refresh")" -v s="$(median "$nd_refresh")" 'BEGIN{
        printf "ratio claude-tokend/Node, fresh token:   %.3f (1/%.0f; target <= 0.200: %s)\n", a/b, b/a, (a/b <= 0.2 ? "met" : "MISSED")
        printf "ratio claude-tokend/Node, refresh:       %.3f (1/%.1f)\n", r/s, s/r }'
fi
awk -v a="$fresh_ms" 'BEGIN{printf "claude-tokend --once, fresh token:       %.2f ms median (target < 5 ms: %s)\n", a, (a < 5 ? "met" : "MISSED")}'
awk -v a="$fresh_ms" -v t="$(median "$ct_token")" 'BEGIN{printf "claude-tokend token, fresh token:        %.2f ms median (target: as fast as --once, within 10%%: %s)\n", t, (t <= a * 1.1 ? "met" : "MISSED")}'
awk -v d="$(median "$ct_doctor")" -v s="$(median "$ct_status")" 'BEGIN{printf "claude-tokend doctor --offline, 1 login: %.2f ms median (status: %.2f ms; target well under 100 ms, < 20 ms: %s)\n", d, s, (d < 20 ? "met" : "MISSED")}'
echo "idle daemon RSS:                         $rss KiB ($(awk -v k="$rss" 'BEGIN{printf "%.1f MiB", k/1024}'); target < 4 MiB)"
echo "idle daemon CPU over 10 s:               $(( t1 - t0 )) ticks (target 0)"
echo "idle daemon, 8 logins, RSS:              $rss8 KiB ($(awk -v k="$rss8" 'BEGIN{printf "%.1f MiB", k/1024}'); target < 5 MiB)"
echo "idle daemon, 8 logins, CPU over 10 s:    $(( t8_1 - t8_0 )) ticks (target 0)"
echo "idle daemon, 8 logins + 8 mirrors, RSS:  $rssm KiB ($(awk -v k="$rssm" 'BEGIN{printf "%.1f MiB", k/1024}'); target < 5 MiB)"
echo "idle daemon, 8 + 8 mirrors, CPU / 10 s:  $(( tm_1 - tm_0 )) ticks (target 0)"
echo "context switches over 65 s, 1 login:     $(( w1 - w0 ))"
echo "context switches over 65 s, 8 logins:    $(( w8_1 - w8_0 )) (target: no more than with 1 login; wake-ups do not grow with logins)"
echo "context switches over 65 s, 8 + mirrors: $(( wm_1 - wm_0 )) (the once-a-minute mirror check falls in this window)"
echo "release binary:                          $(size "$BIN") bytes ($(mb "$(size "$BIN")"); target < 6 MB)"

# --- optional: the release profile, on and off ------------------------------------------------
if [ "${BENCH_PROFILES:-0}" = 1 ]; then
    check fresh "$OFF" --once >/dev/null
    write_creds 28800
    off_fresh=$($T "$RUNS" -- "$OFF" --once)
    echo
    row "release profile" "binary size" "--once, fresh token"
    row "lto, cgu=1, strip, abort" "$(size "$BIN") bytes ($(mb "$(size "$BIN")"))" "$(short "$ct_fresh")"
    row "all four off" "$(size "$OFF") bytes ($(mb "$(size "$OFF")"))" "$(short "$off_fresh")"
    echo "(off: lto=false, codegen-units=16, strip=none, panic=unwind, via CARGO_PROFILE_RELEASE_*)"
fi
