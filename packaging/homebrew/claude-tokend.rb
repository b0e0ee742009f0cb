# Homebrew formula for claude-tokend, built from source with cargo.
#
#   brew install <tap>/claude-tokend     from a tap that carries this file (Homebrew installs
#                                        formulae only from taps: see the README's Install section)
#   brew services start claude-tokend                              the launchd agent (systemd on Linux)
#
# The version is the tag below; packaging/test.sh fails when it differs from Cargo.toml. A git tag
# rather than a tarball: the formula lives in the repository it builds, so the tarball's checksum
# cannot be known when the formula is committed.
class ClaudeTokend < Formula
  desc "Keeps a Claude Code OAuth login alive by refreshing it ahead of expiry"
  homepage "https://github.com/claude-tokend/claude-tokend"
  url "https://github.com/claude-tokend/claude-tokend.git", tag: "v0.1.0"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/claude-tokend/claude-tokend.git", branch: "main"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args(path: "crates/daemon")
    # Completions and man pages come from the binary just built, so they match its flags.
    generate_completions_from_executable(bin/"claude-tokend", "completions", shells: [:bash, :zsh, :fish])
    man1.mkpath
    system bin/"claude-tokend", "man", "--dir", man1
  end

  def caveats
    <<~EOS
      Sign in first if Claude Code has not (claude-tokend login), then start the daemon:
        brew services start claude-tokend
      `claude-tokend service install` writes its own LaunchAgent instead: use one or the other.
    EOS
  end

  # As the repository's launchd/ agent: restarted after a failure, not after a clean stop, at
  # most every 30 seconds; a background process.
  service do
    run opt_bin/"claude-tokend"
    keep_alive successful_exit: false
    throttle_interval 30
    process_type :background
    log_path var/"log/claude-tokend.log"
    error_log_path var/"log/claude-tokend.log"
  end

  test do
    version_line = shell_output("#{bin}/claude-tokend --version")
    assert_match(/\Aclaude-tokend \d+\.\d+\.\d+/, version_line)
    assert_match "claude-tokend #{version}", version_line unless build.head?
    # No login here: status names the missing file and exits 78.
    output = shell_output("#{bin}/claude-tokend status --store file " \
                          "--credentials #{testpath}/.credentials.json 2>&1", 78)
    assert_match "#{testpath}/.credentials.json", output
  end
end
