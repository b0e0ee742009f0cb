#!/usr/bin/env bash
# Prints the systemd user unit a package installs: systemd/claude-tokend.service, the template
# `claude-tokend service install` embeds and renders, with ExecStart= naming PROGRAM (an
# absolute path, such as /usr/bin/claude-tokend) in place of the template's
# ~/.cargo/bin/claude-tokend.
#
#   bash packaging/systemd-unit.sh /usr/bin/claude-tokend > claude-tokend.service
#
# Why the template and not `service install` itself: the renderer, run with default settings,
# changes exactly that one line (the checked-in file is the one source both read; `service
# install` also puts a first line marking the files it wrote, which a packaged unit is not), while
# `service install` renders the path of the binary it runs from and behaves differently where a
# packaged unit is already installed, so a package build would depend on the build machine.
# packaging/test.sh checks that the result is what `service install` renders for the same
# program, so the two cannot drift apart unnoticed.
set -euo pipefail

program=${1:?usage: systemd-unit.sh /absolute/path/to/claude-tokend}
case $program in
  /*) ;;
  *) echo "systemd-unit.sh: the program must be an absolute path, not $program" >&2; exit 2 ;;
esac
# The renderer quotes a path with anything but these characters; a package path never needs it.
if ! [[ $program =~ ^[A-Za-z0-9/._+-]+$ ]]; then
  echo "systemd-unit.sh: $program needs quoting in a unit; use a plain path" >&2
  exit 2
fi

template="$(cd "$(dirname "$0")/.." && pwd)/systemd/claude-tokend.service"
exec_line='ExecStart=%h/.cargo/bin/claude-tokend'
# The renderer replaces exactly this line; a template without it (or with two) would give a unit
# running the wrong program.
count=$(grep -cxF "$exec_line" "$template" || true)
if [ "$count" != 1 ]; then
  echo "systemd-unit.sh: $template has $count lines '$exec_line', expected 1" >&2
  exit 1
fi
while IFS= read -r line || [ -n "$line" ]; do
  if [ "$line" = "$exec_line" ]; then
    printf 'ExecStart=%s\n' "$program"
  else
    printf '%s\n' "$line"
  fi
done <"$template"
