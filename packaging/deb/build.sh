#!/usr/bin/env bash
# Builds the Debian/Ubuntu package of claude-tokend with plain dpkg-deb, for the architecture of
# this machine (`dpkg --print-architecture`). The last line it prints is the path of the .deb.
#
#   bash packaging/deb/build.sh [OUTDIR]        OUTDIR defaults to target/deb
#
# It runs `cargo build --release --locked` (a no-op when target/release is up to date; the
# network is used only to fetch crates, and only when they are not already in cargo's cache),
# then has the built binary write its own man pages and completions, so they match that binary.
# The package holds:
#
#   /usr/bin/claude-tokend
#   /usr/share/man/man1/claude-tokend.1.gz             and one page per command (claude-tokend-*.1.gz)
#   /usr/share/bash-completion/completions/claude-tokend
#   /usr/share/zsh/vendor-completions/_claude-tokend
#   /usr/share/fish/vendor_completions.d/claude-tokend.fish
#   /usr/lib/systemd/user/claude-tokend.service         ExecStart=/usr/bin/claude-tokend, NOT enabled
#   /usr/share/doc/claude-tokend/copyright
#
# No maintainer scripts: installing the package enables and starts nothing (each user runs
# `systemctl --user enable --now claude-tokend`), and removing it stops nothing.
#
# Environment: CARGO_TARGET_DIR (where cargo builds), DEBFULLNAME and DEBEMAIL (the Maintainer
# field), SOURCE_DATE_EPOCH (file times; default: the last commit's time, for a reproducible
# package).
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=never

say() { printf 'deb: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for tool in cargo dpkg dpkg-deb gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian/Ubuntu: apt-get install dpkg-dev; cargo: rustup.rs)"
done

outdir=${1:-${CARGO_TARGET_DIR:-target}/deb}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# The version is the one Cargo.toml gives the binary's crate. A Rust pre-release (1.2.0-rc.1)
# must sort before its release, which in Debian's ordering takes `~`.
pkgid=$(cargo pkgid --locked -p claude-tokend)
version=${pkgid##*[#@]}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the version from cargo pkgid: $pkgid"
deb_version=${version//-/\~}
arch=$(dpkg --print-architecture)
repository=$(sed -n 's/^repository *= *"\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$repository" ] || die "no repository = \"...\" in [workspace.package] of Cargo.toml"

say "cargo build --release --locked"
cargo build --release --locked >&2
bin=${CARGO_TARGET_DIR:-target}/release/claude-tokend
[ -x "$bin" ] || die "no executable at $bin after the build"
"$bin" --version >/dev/null || die "$bin does not run on this machine"

# Reproducible times: every file gets the last commit's time unless the caller chose one.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

name=claude-tokend
stage="$outdir/${name}_${deb_version}_${arch}"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
usr="$stage/usr"

install -D -m 0755 "$bin" "$usr/bin/$name"

# The man pages, written by the binary (one per command), compressed as Debian does (-n: no
# name or time inside, so the package is reproducible).
man1="$usr/share/man/man1"
mkdir -p "$man1"
"$bin" man --dir "$man1" >/dev/null
[ -f "$man1/$name.1" ] || die "\`$name man --dir\` wrote no $name.1"
chmod 0644 "$man1"/*.1
gzip -9n "$man1"/*.1

# Completions in each shell's vendor directory: found without any setup by the user.
install -d "$usr/share/bash-completion/completions" "$usr/share/zsh/vendor-completions" \
  "$usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$usr/share/bash-completion/completions/$name"
"$bin" completions zsh >"$usr/share/zsh/vendor-completions/_$name"
"$bin" completions fish >"$usr/share/fish/vendor_completions.d/$name.fish"

# The user unit: the same one `service install` writes, running the packaged binary.
install -d "$usr/lib/systemd/user"
bash packaging/systemd-unit.sh "/usr/bin/$name" >"$usr/lib/systemd/user/$name.service"

# Debian's machine-readable copyright file: this program's licenses, and the crates compiled
# into the binary with theirs (from Cargo.lock, through the normal dependency edges, without
# proc-macros, which run at build time and are not in the binary).
crates=$(cargo tree --locked -p "$name" -e normal,no-proc-macro --prefix none --format '{p} {l}' |
  sed -e 's/ (\*)$//' -e 's/ (\/[^)]*)//' | grep -v '^claude-tokend' | LC_ALL=C sort -u) ||
  die "cargo tree could not list the crates in the binary"
doc="$usr/share/doc/$name"
install -d "$doc"
{
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: %s\nUpstream-Contact: %s/issues\nSource: %s\n\n' "$name" "$repository" "$repository"
  printf 'Files: *\nCopyright: The claude-tokend developers\nLicense: MIT or Apache-2.0\n'
  printf ' You may use this program under the terms of either license, at your option.\n'
  printf ' .\n The binary also contains these Rust crates from crates.io, each under its own\n'
  printf ' license (name, version, license):\n .\n'
  printf '%s\n' "$crates" | sed 's/^/  /'
  printf '\nLicense: MIT\n'
  sed -e 's/^$/./' -e 's/^/ /' LICENSE-MIT
  printf '\nLicense: Apache-2.0\n'
  printf ' On Debian systems, the complete text of the Apache License, Version 2.0, is in\n'
  printf ' /usr/share/common-licenses/Apache-2.0 (and in LICENSE-APACHE in the source).\n'
} >"$doc/copyright"

# Runtime dependencies from the shared libraries the binary links (libc, libgcc_s):
# dpkg-shlibdeps where dpkg-dev has it, else the newest glibc symbol version it needs.
depends=
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  shlib=$(mktemp -d)
  mkdir -p "$shlib/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" >"$shlib/debian/control"
  depends=$(cd "$shlib" && dpkg-shlibdeps -O "$usr/bin/$name" 2>/dev/null | sed -n 's/^shlibs:Depends=//p') || depends=
  rm -rf "$shlib"
fi
if [ -z "$depends" ]; then
  glibc=$(objdump -T "$usr/bin/$name" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1 || true)
  depends="libc6${glibc:+ (>= $glibc)}, libgcc-s1"
fi

installed_kib=$(du -sk --apparent-size "$usr" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $deb_version
Architecture: $arch
Maintainer: ${DEBFULLNAME:-The claude-tokend developers} <${DEBEMAIL:-claude-tokend@users.noreply.github.com}>
Installed-Size: $installed_kib
Depends: $depends
Recommends: ca-certificates
Suggests: systemd
Section: utils
Priority: optional
Homepage: $repository
Description: keeps a Claude Code OAuth login alive
 claude-tokend is the one careful refresher of Claude Code's OAuth login
 (~/.claude/.credentials.json): it refreshes ahead of expiry, serialized with
 Claude Code by a lock, writing the file atomically and keeping every key it
 does not own.
 .
 The package installs a systemd user unit but does not enable it; each user
 who wants the daemon runs: systemctl --user enable --now claude-tokend
CONTROL

# Every file and directory gets the same time; modes are what install/umask gave them.
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb="$outdir/${name}_${deb_version}_${arch}.deb"
rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
rm -rf "$stage"
say "built $name $deb_version for $arch"
printf '%s\n' "$deb"
