#!/usr/bin/env bash
# Tests the packages of CONTRACT.md "Packages" as far as this machine allows; .ci/run runs it after
# the release build, which it reuses:
#
#   - versions and repository URLs agree (Cargo.toml, the core crate pin, the Homebrew formula,
#     the PKGBUILD), with a self-test that a drift is caught;
#   - the .deb (packaging/deb/build.sh): its files, modes and owners, no maintainer scripts and
#     nothing enabled, its unit equal to what `service install` renders for /usr/bin; then, as
#     root, `dpkg -i`, the installed binary, `systemd-analyze --user verify` of the installed unit,
#     its man page, and `dpkg -r` leaving nothing behind;
#   - the release archive (packaging/archive.sh) and the [package.metadata.binstall] templates
#     that must find it;
#   - the Homebrew formula (`ruby -c`, then its install, service and test blocks against a
#     stand-in for Homebrew: packaging/homebrew/check_formula.rb);
#   - the PKGBUILD (`bash -n`, then its prepare, build and package functions, as makepkg would
#     call them, and the files they install);
#   - .github/workflows/release.yml against GitHub's workflow schema (check-jsonschema);
#   - `cargo package` of the two published crates, with the verification build.
#
#   bash packaging/test.sh
#
# A tool a check needs (ruby, check-jsonschema, dpkg, root for dpkg -i) is required when CI=true
# (.ci/run installs them); elsewhere its absence skips that check with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TERM_COLOR=never

passed=0 failed=0 skipped=0
ok() { printf 'packaging: ok: %s\n' "$*"; passed=$((passed + 1)); }
bad() { printf 'packaging: FAILED: %s\n' "$*"; failed=$((failed + 1)); }
skip() { printf 'packaging: skipped: %s\n' "$*"; skipped=$((skipped + 1)); }
check() { # check WHAT COMMAND...: ok when the command succeeds
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
need() { # need TOOL WHY: present, or (outside CI) a skip, or (in CI) a failure
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${CI:-}" = true ]; then bad "$1 is missing in CI (.ci/run installs it): $2"; else skip "$2: $1 not found"; fi
  return 1
}
step() { printf '\n-- %s\n' "$*"; }

work=$(mktemp -d)
installed=
cleanup() {
  # Never leave the package installed, whatever failed on the way.
  if [ -n "$installed" ]; then
    dpkg -r claude-tokend >/dev/null 2>&1 || true
    enable_links | while read -r link; do rm -f "$link"; rmdir --ignore-fail-on-non-empty "$(dirname "$link")"; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

pkgid=$(cargo pkgid --locked -p claude-tokend)
version=${pkgid##*[#@]}
deb_version=${version//-/\~}
# python3 reads TOML properly; every CI machine has it (.ci/run's venv needs it too).
toml() { # toml FILE KEY.PATH: one string value
  python3 -c 'import sys, tomllib
v = tomllib.load(open(sys.argv[1], "rb"))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"
}
repository=$(toml Cargo.toml workspace.package.repository)
bin=${CARGO_TARGET_DIR:-target}/release/claude-tokend

# ---------------------------------------------------------------------------------------------
step "versions and repository agree"

# versions_agree FORMULA PKGBUILD: what each file says against Cargo.toml; prints the drift.
versions_agree() {
  local formula=$1 pkgbuild=$2 status=0 tag pkgver url
  tag=$(sed -n 's/^ *url "[^"]*", *tag: "\([^"]*\)".*/\1/p' "$formula")
  [ "$tag" = "v$version" ] || { echo "    formula tag $tag, Cargo.toml $version"; status=1; }
  grep -qF "homepage \"$repository\"" "$formula" || { echo "    formula homepage is not $repository"; status=1; }
  grep -qF "url \"$repository.git\"" "$formula" || { echo "    formula url is not $repository.git"; status=1; }
  # shellcheck disable=SC1090,SC2154 # the PKGBUILD: plain assignments and functions
  pkgver=$(source "$pkgbuild" && printf '%s' "$pkgver") url=$(source "$pkgbuild" && printf '%s' "$url")
  [ "$pkgver" = "$version" ] || { echo "    PKGBUILD pkgver $pkgver, Cargo.toml $version"; status=1; }
  [ "$url" = "$repository" ] || { echo "    PKGBUILD url $url, Cargo.toml $repository"; status=1; }
  return "$status"
}
formula=packaging/homebrew/claude-tokend.rb
pkgbuild=packaging/arch/PKGBUILD
check "formula and PKGBUILD carry version $version and $repository" versions_agree "$formula" "$pkgbuild"
# Self-test: a drifted copy of each must be caught, or the check above proves nothing.
sed "s/tag: \"v$version\"/tag: \"v0.0.0-drift\"/" "$formula" >"$work/drift.rb"
sed "s/^pkgver=.*/pkgver=0.0.0/" "$pkgbuild" >"$work/PKGBUILD.drift"
if versions_agree "$work/drift.rb" "$pkgbuild" >/dev/null; then
  bad "self-test: a formula with another version passed the version check"
else
  ok "self-test: a formula with another version is caught"
fi
if versions_agree "$formula" "$work/PKGBUILD.drift" >/dev/null; then
  bad "self-test: a PKGBUILD with another pkgver passed the version check"
else
  ok "self-test: a PKGBUILD with another pkgver is caught"
fi
core_req=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["dependencies"]["claude-tokend-core"]["version"])')
core_id=$(cargo pkgid --locked -p claude-tokend-core)
check "the daemon crate asks for exactly its own version of the core crate (=$version)" \
  test "$core_req" = "=$version" -a "${core_id##*[#@]}" = "$version"

# ---------------------------------------------------------------------------------------------
step "the .deb: build and inspect"

deb=
if need dpkg-deb "the .deb"; then
  log="$work/deb-build.log"
  if deb=$(bash packaging/deb/build.sh "$work/deb" 2>"$log" | tail -n1) && [ -f "$deb" ]; then
    ok "packaging/deb/build.sh built $(basename "$deb") (its last line is the path)"
  else
    sed 's/^/    /' "$log"
    bad "packaging/deb/build.sh did not build a .deb"
    deb=
  fi
fi

if [ -n "$deb" ]; then
  arch=$(dpkg --print-architecture)
  check "named claude-tokend_${deb_version}_$arch.deb" test "$(basename "$deb")" = "claude-tokend_${deb_version}_$arch.deb"
  field() { dpkg-deb -f "$deb" "$1"; }
  check "control: Package claude-tokend, Version $deb_version, Architecture $arch" \
    test "$(field Package) $(field Version) $(field Architecture)" = "claude-tokend $deb_version $arch"
  check "control: depends on libc6 ($(field Depends))" grep -q '^libc6' <<<"$(field Depends)"
  # TLS verification reads the system's CA list: without ca-certificates every request fails.
  check "control: recommends ca-certificates" grep -qx 'ca-certificates' <<<"$(field Recommends)"

  # The files: exactly these, plus one man page per command as the binary writes them.
  mkdir -p "$work/pages"
  "$bin" man --dir "$work/pages" >/dev/null
  {
    printf '%s\n' ./usr/bin/claude-tokend \
      ./usr/share/bash-completion/completions/claude-tokend \
      ./usr/share/zsh/vendor-completions/_claude-tokend \
      ./usr/share/fish/vendor_completions.d/claude-tokend.fish \
      ./usr/lib/systemd/user/claude-tokend.service \
      ./usr/share/doc/claude-tokend/copyright
    for page in "$work"/pages/*.1; do printf './usr/share/man/man1/%s.gz\n' "$(basename "$page")"; done
  } | LC_ALL=C sort >"$work/expected"
  dpkg-deb -c "$deb" >"$work/contents"
  awk '$1 !~ /^d/ { print $6 }' "$work/contents" | LC_ALL=C sort >"$work/actual"
  if diff -u "$work/expected" "$work/actual" >"$work/diff"; then
    ok "the package holds exactly the binary, $(grep -c man1 "$work/expected") man pages, 3 completions, the unit and copyright"
  else
    sed 's/^/    /' "$work/diff"
    bad "the package's files differ from the expected list (- expected, + in the package)"
  fi
  modes_ok() {
    awk '
      $2 != "root/root" { print "    not root/root: " $0; bad = 1 }
      $1 ~ /^d/ && $1 != "drwxr-xr-x" { print "    directory mode: " $0; bad = 1 }
      $1 ~ /^l/ { print "    a symlink (an enabled unit?): " $0; bad = 1 }
      $1 ~ /^-/ && $6 == "./usr/bin/claude-tokend" && $1 != "-rwxr-xr-x" { print "    binary mode: " $0; bad = 1 }
      $1 ~ /^-/ && $6 != "./usr/bin/claude-tokend" && $1 != "-rw-r--r--" { print "    file mode: " $0; bad = 1 }
      END { exit bad }' "$work/contents"
  }
  check "owned by root, binary 0755, files 0644, directories 0755, no symlinks" modes_ok
  check "nothing enabled: no .wants/ directory, nothing under /etc" \
    bash -c '! grep -E "\.wants/|\./etc/" "$1"' _ "$work/contents"
  dpkg-deb --ctrl-tarfile "$deb" | tar -t | LC_ALL=C sort >"$work/control-files"
  check "no maintainer scripts (control archive: $(tr '\n' ' ' <"$work/control-files"))" \
    bash -c '! grep -vxE "\./|\./control|\./md5sums" "$1"' _ "$work/control-files"

  mkdir -p "$work/x"
  dpkg-deb -x "$deb" "$work/x"
  unit="$work/x/usr/lib/systemd/user/claude-tokend.service"
  check "the unit runs /usr/bin/claude-tokend" grep -qx 'ExecStart=/usr/bin/claude-tokend' "$unit"
  check "the copyright file names the licenses and the crates in the binary" \
    grep -q '^License: MIT or Apache-2.0$' "$work/x/usr/share/doc/claude-tokend/copyright"
  check "the packaged binary is the version of Cargo.toml" \
    test "$("$work/x/usr/bin/claude-tokend" --version)" = "claude-tokend $version"

  # The unit must be what `service install` writes for a binary at /usr/bin: render it from the
  # packaged binary in a scratch home, then put /usr/bin in its ExecStart= line and drop the
  # first line, with which `service install` marks the files it wrote (a packaged unit is not one).
  render_unit() {
    local r="$work/render"
    mkdir -p "$r/home" "$r/bin"
    cp "$work/x/usr/bin/claude-tokend" "$r/bin/claude-tokend"
    env -i PATH=/usr/bin:/bin HOME="$r/home" XDG_CONFIG_HOME="$r/config" \
      CLAUDE_TOKEND_SERVICE_MANAGER=systemd "$r/bin/claude-tokend" service install >/dev/null 2>"$r/err" ||
      { cat "$r/err"; return 1; }
    [ -f "$r/config/systemd/user/claude-tokend.service" ] || return 2
    sed -e '1{/^# Written by `claude-tokend service install`/d;}' \
      -e "s|^ExecStart=$r/bin/claude-tokend\$|ExecStart=/usr/bin/claude-tokend|" \
      "$r/config/systemd/user/claude-tokend.service" >"$work/rendered.service"
  }
  rc=0
  render_unit || rc=$?
  if [ "$rc" = 2 ]; then
    # With a packaged unit on this machine, `service install` writes only a drop-in.
    skip "the unit against \`service install\`: a packaged unit is installed here, so it wrote a drop-in"
  elif [ "$rc" = 0 ] && diff -u "$work/rendered.service" "$unit" >"$work/diff"; then
    ok "the packaged unit is exactly what \`service install\` writes, with ExecStart=/usr/bin/claude-tokend"
  else
    sed 's/^/    /' "$work/diff" 2>/dev/null || true
    bad "the packaged unit differs from what \`service install\` renders (- rendered, + packaged)"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "the .deb: install, run, verify, remove"

package_paths() { awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' "$work/contents"; }
# Links that would enable the unit for every user (what `systemctl --global enable` makes).
enable_links() { find /etc/systemd/user /usr/lib/systemd/user -path '*.wants/claude-tokend*' 2>/dev/null || true; }
if [ -z "$deb" ]; then
  skip "installing the .deb: none was built"
elif [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then bad "CI must run as root to install the .deb"; else skip "dpkg -i and dpkg -r: needs root"; fi
elif dpkg-query -W -f='${Status}' claude-tokend 2>/dev/null | grep -q ' installed$'; then
  bad "claude-tokend is already installed on this machine (dpkg -s claude-tokend): remove it before this test, which installs and removes it"
elif [ -n "$(enable_links)" ]; then
  bad "the unit is already enabled globally here ($(enable_links | tr '\n' ' ')): the check that installing enables nothing cannot run"
elif clash=$(package_paths | while read -r p; do [ -e "$p" ] && echo "$p"; done) && [ -n "$clash" ]; then
  bad "files the package would overwrite already exist (not installing): $clash"
else
  installed=yes
  check "dpkg -i installs it" dpkg -i "$deb"
  check "installing enabled nothing: no claude-tokend link in a .wants/ directory of the system" \
    test -z "$(enable_links)"
  check "the installed /usr/bin/claude-tokend runs: $(/usr/bin/claude-tokend --version 2>&1)" \
    test "$(/usr/bin/claude-tokend --version 2>&1)" = "claude-tokend $version"
  listed() {
    local known p
    known=$(dpkg -L claude-tokend)
    for p in $(package_paths); do grep -qxF "$p" <<<"$known" || { echo "    not in dpkg -L: $p"; return 1; }; done
  }
  check "dpkg -L lists every file of the package" listed
  check "bash loads the installed completion" \
    bash -c 'source /usr/share/bash-completion/completions/claude-tokend && complete -p claude-tokend >/dev/null'

  # systemd-analyze finds the unit's man page (Documentation=) through man's own search path:
  # the installed page, not one put on MANPATH.
  if command -v systemd-analyze >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1; then
    check "systemd-analyze --user verify: the installed unit, zero warnings" \
      env -u MANPATH bash .ci/verify-units.sh /usr/lib/systemd/user/claude-tokend.service
  else
    skip "systemd-analyze --user verify: no systemd-analyze and no apt-get to install it"
  fi
  # CONTRACT "Packages": with the packaged unit installed, `service install` writes only a
  # drop-in with the settings it would have put in its own unit, and says to enable the package's.
  u="$work/user"
  mkdir -p "$u/home"
  packaged_install() {
    env -i PATH=/usr/bin:/bin HOME="$u/home" XDG_CONFIG_HOME="$u/config" /usr/bin/claude-tokend \
      service install --credentials "$u/home/creds/.credentials.json" --refresh-before 20m >"$u/out" 2>&1 ||
      { sed 's/^/    /' "$u/out"; return 1; }
    [ ! -e "$u/config/systemd/user/claude-tokend.service" ] || { echo "    it wrote a second unit"; return 1; }
    grep -qs 'CLAUDE_TOKEND_REFRESH_BEFORE=20m' "$u"/config/systemd/user/claude-tokend.service.d/*.conf ||
      { echo "    no drop-in carrying the settings in claude-tokend.service.d/"; return 1; }
    grep -q 'systemctl --user enable --now claude-tokend' "$u/out" || { echo "    it does not say to enable the unit"; return 1; }
  }
  check "service install with the package: only a drop-in with the settings, and how to enable the packaged unit" \
    packaged_install
  if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze --user verify: the installed unit with that drop-in, zero warnings" \
      env -u MANPATH HOME="$u/home" XDG_CONFIG_HOME="$u/config" \
      bash .ci/verify-units.sh /usr/lib/systemd/user/claude-tokend.service
  fi

  if command -v man >/dev/null 2>&1; then
    check "man finds the installed page by name" test "$(env -u MANPATH man -w claude-tokend)" = /usr/share/man/man1/claude-tokend.1.gz
    man_ok() {
      local out err
      out=$(env -u MANPATH MANWIDTH=80 man --warnings -l /usr/share/man/man1/claude-tokend.1.gz 2>"$work/man.err")
      err=$(cat "$work/man.err")
      [ -z "$err" ] || { printf '    %s\n' "$err"; return 1; }
      grep -q 'EXIT STATUS' <<<"$out"
    }
    check "man -l renders the page without a warning" man_ok
  else
    skip "man -l: man not found"
  fi

  check "dpkg -r removes it" dpkg -r claude-tokend
  installed=
  check "dpkg -s: not installed any more" \
    bash -c '! dpkg-query -W -f="\${Status}" claude-tokend 2>/dev/null | grep -q " installed$"'
  left=$(
    package_paths | while read -r p; do [ -e "$p" ] && echo "$p"; done
    [ -e /usr/share/doc/claude-tokend ] && echo /usr/share/doc/claude-tokend
    enable_links
  )
  check "nothing of the package is left${left:+: $left}" test -z "$left"
  # Links a broken package made (none existed before it was installed) must not outlive the test.
  enable_links | while read -r link; do rm -f "$link"; rmdir --ignore-fail-on-non-empty "$(dirname "$link")"; done
fi

# ---------------------------------------------------------------------------------------------
step "release archive and cargo binstall"

host=$(rustc -vV | sed -n 's/^host: //p')
if archive=$(bash packaging/archive.sh "$host" "$bin" "$work/dist" | tail -n1) && [ -f "$archive" ]; then
  ok "packaging/archive.sh made $(basename "$archive")"
  tar -tzvf "$archive" >"$work/archive-list"
  name="claude-tokend-$version-$host"
  archive_has() { awk -v p="$1" '$6 == p' "$work/archive-list" | grep -q .; }
  missing=
  for f in claude-tokend man/man1/claude-tokend.1 completions/claude-tokend.bash completions/_claude-tokend \
    completions/claude-tokend.fish systemd/claude-tokend.service README.md LICENSE-MIT LICENSE-APACHE; do
    archive_has "$name/$f" || missing="$missing $f"
  done
  check "the archive holds the binary, man page, completions, unit, README and licenses in $name/${missing:+ (missing:$missing)}" \
    test -z "$missing"
  # What cargo binstall computes from [package.metadata.binstall] for this version and target.
  expand() {
    python3 - "$1" "$version" "$host" "$repository" <<'PY'
import sys, tomllib
key, version, target, repo = sys.argv[1:]
meta = tomllib.load(open("crates/daemon/Cargo.toml", "rb"))["package"]["metadata"]["binstall"]
value = meta[key]
for k, v in {"repo": repo, "name": "claude-tokend", "version": version, "target": target,
             "bin": "claude-tokend", "binary-ext": "", "archive-suffix": ".tgz", "format": "tgz"}.items():
    value = value.replace("{ %s }" % k, v)
assert "{" not in value, value
print(value)
PY
  }
  url=$(expand pkg-url)
  bindir=$(expand bin-dir)
  check "binstall's pkg-url is this archive on the release page: $url" \
    test "$url" = "$repository/releases/download/v$version/$(basename "$archive")"
  executable_in_archive() { awk -v p="$1" '$6 == p && $1 ~ /^-rwx/' "$work/archive-list" | grep -q .; }
  check "binstall's bin-dir ($bindir) is the archive's executable" executable_in_archive "$bindir"
  check "binstall's pkg-fmt is tgz" test "$(expand pkg-fmt)" = tgz
else
  bad "packaging/archive.sh made no archive"
fi

# ---------------------------------------------------------------------------------------------
step "Homebrew formula"

if need ruby "the Homebrew formula"; then
  check "ruby -c $formula" ruby -c "$formula"
  if ruby packaging/homebrew/check_formula.rb "$version" "$repository" >"$work/formula.log" 2>&1; then
    ok "the formula installs, serves and tests as Homebrew would ($(grep -c ': ok:' "$work/formula.log") checks)"
  else
    sed 's/^/    /' "$work/formula.log"
    bad "packaging/homebrew/check_formula.rb"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "Arch PKGBUILD"

check "bash -n $pkgbuild" bash -n "$pkgbuild"
# As makepkg does: each function in a fresh shell of the PKGBUILD, from $srcdir, where the git
# source is checked out as $srcdir/claude-tokend (here: this repository), installing into $pkgdir.
arch_dir="$work/arch"
mkdir -p "$arch_dir/src" "$arch_dir/pkg/claude-tokend"
ln -s "$root" "$arch_dir/src/claude-tokend"
run_pkgbuild() {
  local fn
  for fn in prepare build check package; do
    (
      set -euo pipefail
      # What makepkg gives the functions.
      export srcdir="$arch_dir/src" pkgdir="$arch_dir/pkg/claude-tokend"
      # shellcheck disable=SC1090
      source "$root/$pkgbuild"
      cd "$srcdir"
      "$fn"
    ) >"$arch_dir/$fn.log" 2>&1 || { sed 's/^/    /' "$arch_dir/$fn.log"; echo "    ($fn failed)"; return 1; }
  done
}
if check "the PKGBUILD's prepare, build, check and package run" run_pkgbuild; then
  p="$arch_dir/pkg/claude-tokend"
  missing=
  for f in usr/bin/claude-tokend usr/share/man/man1/claude-tokend.1 \
    usr/share/bash-completion/completions/claude-tokend usr/share/zsh/site-functions/_claude-tokend \
    usr/share/fish/vendor_completions.d/claude-tokend.fish usr/lib/systemd/user/claude-tokend.service \
    usr/share/licenses/claude-tokend/LICENSE-MIT usr/share/licenses/claude-tokend/LICENSE-APACHE; do
    [ -s "$p/$f" ] || missing="$missing /$f"
  done
  check "package() installs the binary, man pages, completions, unit and licenses${missing:+ (missing:$missing)}" test -z "$missing"
  check "package() installs an executable /usr/bin/claude-tokend" test -x "$p/usr/bin/claude-tokend"
  if [ -n "$deb" ]; then
    check "the PKGBUILD's unit is the .deb's" cmp -s "$p/usr/lib/systemd/user/claude-tokend.service" "$unit"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "release workflow"

workflow=.github/workflows/release.yml
if need check-jsonschema "the release workflow against GitHub's schema"; then
  check "check-jsonschema --builtin-schema vendor.github-workflows $workflow" \
    check-jsonschema --builtin-schema vendor.github-workflows "$workflow"
  # Self-test: a workflow with a misspelt key must fail, or the check proves nothing.
  sed 's/^    runs-on:/    run-on:/' "$workflow" >"$work/broken.yml"
  check "self-test: a workflow with a misspelt key fails the schema" \
    bash -c '! check-jsonschema --builtin-schema vendor.github-workflows "$1" >/dev/null 2>&1' _ "$work/broken.yml"
fi
for script in packaging/archive.sh packaging/deb/build.sh; do
  check "the workflow runs $script, which this test ran" grep -q "bash $script" "$workflow"
done
if command -v actionlint >/dev/null 2>&1; then
  check "actionlint $workflow" actionlint "$workflow"
else
  skip "actionlint: no build of it from a package registry that can be trusted installs here (README: Tests)"
fi

# ---------------------------------------------------------------------------------------------
step "crates: cargo package"

# Both published crates at once, so the daemon's dependency on the core crate resolves to the
# core crate just packaged (not yet on crates.io); each is then built from its .crate file as
# `cargo install` would build it. --allow-dirty: what is checked is the packaging, not the git
# state (a clean clone in CI anyway).
#
# Cargo takes a registry crate of an unchanged version for unchanged, and the packaged core crate
# comes from a temporary registry at a fixed path (target/package/tmp-registry): its earlier build
# (and its unpacked copy in $CARGO_HOME/registry/src/-<hash of that path>/) would be reused after
# the core crate changed, and the daemon checked against the old one. Both are dropped first: the
# build of the core crate whose dep-info names a registry source (the workspace's own build of it
# names crates/core and stays), and the unpacked copies of our crates. The dependencies' builds,
# shared with the test step, are kept: that is most of the time saved.
pkg_target=${CARGO_TARGET_DIR:-target}
for depinfo in "$pkg_target"/debug/deps/tokend_core-*.d; do
  if ! grep -qs '/registry/src/' "$depinfo"; then continue; fi
  hash=${depinfo##*/tokend_core-}
  rm -rf "$pkg_target/debug/.fingerprint/claude-tokend-core-${hash%.d}"
done
for stale in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/claude-tokend-*; do
  [ -d "$stale" ] && rm -rf "$stale"
done
if cargo package --workspace --exclude claude-tokend-e2e --locked --allow-dirty >"$work/package.log" 2>&1; then
  ok "cargo package --workspace --locked: claude-tokend-core and claude-tokend package and build from their .crate files"
  crate="$pkg_target/package/claude-tokend-$version.crate"
  check "the daemon's .crate carries the service templates it embeds and the licenses" \
    bash -c 'l=$(tar -tzf "$1") && for f in systemd/claude-tokend.service systemd/claude-tokend-sandbox.conf \
      launchd/io.github.claude-tokend.plist LICENSE-MIT LICENSE-APACHE README.md; do
      grep -qx "claude-tokend-$2/$f" <<<"$l" || exit 1; done' _ "$crate" "$version"
else
  sed 's/^/    /' "$work/package.log" | tail -n 40
  bad "cargo package --workspace --locked"
fi
check "the test crate is not published (publish = false)" \
  test "$(toml tests/Cargo.toml package.publish)" = False

printf '\npackaging: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
[ "$failed" -eq 0 ]
