#!/usr/bin/env bash
# The benchmark anyone can run: `bash bench/run.sh` from the repository root.
# Prints, from one run on this machine: the release binary's size; `--once` on a fresh token
# (the whole process); `--once` that refreshes against a loopback endpoint; the idle daemon's
# RSS and CPU ticks over 10 s. Needs python3 (for the loopback endpoint); nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}

cargo build --release --locked -q
BIN=$PWD/target/release/claude-tokend
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -m 700 "$WORK/.claude"
CREDS=$WORK/.claude/.credentials.json

write_creds() { bash bench/write_creds.sh "$CREDS" "$1"; }

python3 bench/token_endpoint.py "$WORK/port" & 
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
export CLAUDE_TOKEND_TOKEN_URL="http://127.0.0.1:$(cat "$WORK/port")/v1/oauth/token"
export HOME=$WORK

T="python3 bench/time_cmd.py"

write_creds 28800
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "binary size:                $(stat -c %s "$BIN") bytes ($(awk -v s="$(stat -c %s "$BIN")" 'BEGIN{printf "%.2f MB", s/1e6}'))"
echo "baseline (/bin/true):       $($T "$RUNS" -- /bin/true)"
echo "--once, fresh token:        $($T "$RUNS" -- "$BIN" --once)  ($RUNS runs)"
echo "--once, refresh (loopback): $($T 50 --setup "bash bench/write_creds.sh '$CREDS' 60" -- "$BIN" --once)  (50 runs)"

write_creds 28800
"$BIN" -q &
PID=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
t0=$(ticks); sleep 10; t1=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
echo "idle daemon RSS:            $rss KiB ($(awk -v k="$rss" 'BEGIN{printf "%.1f MiB", k/1024}'))"
echo "idle daemon CPU over 10 s:  $(( t1 - t0 )) ticks"
kill -TERM $PID; wait $PID || true
