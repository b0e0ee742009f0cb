#!/usr/bin/env bash
# Packs a built claude-tokend into the release archive for one target, as the release workflow
# publishes it and `cargo binstall` expects it ([package.metadata.binstall] in
# crates/daemon/Cargo.toml). The last line it prints is the archive's path.
#
#   bash packaging/archive.sh TARGET BINARY [OUTDIR]
#   bash packaging/archive.sh x86_64-unknown-linux-gnu target/release/claude-tokend dist
#
# The binary must run here: it writes its own man pages and completions (so the archive is made
# on a machine of the target's OS). The archive, claude-tokend-VERSION-TARGET.tar.gz, holds one
# directory of the same name with:
#
#   claude-tokend                       the program
#   man/man1/claude-tokend.1            and one page per command (claude-tokend-*.1)
#   completions/claude-tokend.bash      completions/_claude-tokend (zsh), completions/claude-tokend.fish
#   systemd/claude-tokend.service       the user unit as shipped: runs ~/.cargo/bin/claude-tokend,
#                                       where `cargo binstall` puts the program
#   README.md LICENSE-MIT LICENSE-APACHE
set -euo pipefail
umask 022

target=${1:?usage: archive.sh TARGET BINARY [OUTDIR]}
bin=${2:?usage: archive.sh TARGET BINARY [OUTDIR]}
outdir=${3:-dist}

root=$(cd "$(dirname "$0")/.." && pwd)
die() { printf 'archive: %s\n' "$*" >&2; exit 1; }

[ -x "$bin" ] || die "no executable at $bin"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# The version the binary reports is the one the archive is named for: a stale binary from
# another version cannot end up under this version's name.
version=$("$bin" --version | sed -n 's/^claude-tokend \([0-9][^ ]*\)$/\1/p')
[ -n "$version" ] || die "$bin --version did not say its version"
cd "$root"
cargo_version=$(cargo pkgid --locked -p claude-tokend)
cargo_version=${cargo_version##*[#@]}
[ "$version" = "$cargo_version" ] || die "$bin is version $version, Cargo.toml says $cargo_version"

name="claude-tokend-$version-$target"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir="$work/$name"
mkdir -p "$dir/man/man1" "$dir/completions" "$dir/systemd"

cp "$bin" "$dir/claude-tokend"
chmod 0755 "$dir/claude-tokend"
"$bin" man --dir "$dir/man/man1" >/dev/null
[ -f "$dir/man/man1/claude-tokend.1" ] || die "\`claude-tokend man --dir\` wrote no claude-tokend.1"
"$bin" completions bash >"$dir/completions/claude-tokend.bash"
"$bin" completions zsh >"$dir/completions/_claude-tokend"
"$bin" completions fish >"$dir/completions/claude-tokend.fish"
cp systemd/claude-tokend.service "$dir/systemd/"
cp README.md LICENSE-MIT LICENSE-APACHE "$dir/"
chmod -R u=rwX,go=rX "$dir"

archive="$outdir/$name.tar.gz"
# GNU tar can make the archive reproducible (order, owners, times); BSD tar (macOS) cannot say
# all of that, and gets the plain form.
if tar --version 2>/dev/null | grep -q 'GNU tar'; then
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$work" -cf - "$name" | gzip -9n >"$archive"
else
  tar -C "$work" -czf "$archive" "$name"
fi
printf '%s\n' "$archive"
