# Runs the formula's install, service and test blocks here, where there is no Homebrew, against a
# small stand-in for the part of Homebrew's formula DSL the formula uses, with Homebrew's paths
# (Cellar prefix, etc/bash_completion.d, share/zsh/site-functions, ...). The commands the formula
# gives are run for real: `cargo install` with the formula's arguments in the repository (with
# CARGO_TARGET_DIR pointing at the repository's target/, so an existing release build is reused),
# then the built binary writes the completions and man pages. It then checks that every file is
# where Homebrew will look, that the service block runs the installed program with the settings of
# the repository's launchd agent, and runs the formula's own test block.
#
#   ruby packaging/homebrew/check_formula.rb VERSION REPOSITORY_URL
#
# A DSL method the stand-in does not know fails the check with its name: teach it here, after
# Homebrew's definition, rather than guessing.
require "fileutils"
require "open3"
require "pathname"
require "tmpdir"

EXPECTED_VERSION, EXPECTED_REPO = ARGV
abort "usage: check_formula.rb VERSION REPOSITORY_URL" unless EXPECTED_VERSION && EXPECTED_REPO
REPO = Pathname(__dir__).join("../..").realpath
FORMULA = REPO/"packaging/homebrew/claude-tokend.rb"

$failures = 0
def check(ok, what)
  if ok
    puts "formula: ok: #{what}"
  else
    puts "formula: FAILED: #{what}"
    $failures += 1
  end
end

# The class-level DSL records what the formula declares; the instance methods are the paths and
# helpers an install (and a test block) uses, spelled as Homebrew defines them.
class Formula
  class << self
    def spec
      @spec ||= { depends: [] }
    end

    def desc(text) = spec[:desc] = text
    def homepage(url) = spec[:homepage] = url
    def license(value) = spec[:license] = value

    def url(url, **opts)
      spec[:url] = url
      spec[:url_opts] = opts
    end

    def head(url, **opts)
      spec[:head] = url
      spec[:head_opts] = opts
    end

    def depends_on(dep) = spec[:depends] << dep
    def service(&block) = spec[:service] = block
    def test(&block) = spec[:test] = block

    def method_missing(name, *)
      raise NoMethodError, "the formula uses `#{name}`, which check_formula.rb does not know"
    end
  end

  attr_reader :homebrew_prefix

  def initialize(homebrew_prefix)
    @homebrew_prefix = homebrew_prefix
  end

  def name = "claude-tokend"
  # Homebrew takes a git URL's version from its tag (v0.1.0 -> 0.1.0).
  def version = self.class.spec.fetch(:url_opts).fetch(:tag).delete_prefix("v")
  def prefix = homebrew_prefix/"Cellar"/name/version
  def bin = prefix/"bin"
  def share = prefix/"share"
  def man = share/"man"
  def man1 = man/"man1"
  def bash_completion = prefix/"etc/bash_completion.d"
  def zsh_completion = share/"zsh/site-functions"
  def fish_completion = share/"fish/vendor_completions.d"
  def var = homebrew_prefix/"var"
  def opt_prefix = homebrew_prefix/"opt"/name
  def opt_bin = opt_prefix/"bin"
  def std_cargo_args(root: prefix, path: ".") = ["--locked", "--root=#{root}", "--path=#{path}"]
  def build = Struct.new(:head?).new(false)

  # Homebrew's `system` raises when the command fails.
  def system(cmd, *args)
    ok = Kernel.system(cmd.to_s, *args.map(&:to_s))
    raise "`#{([cmd] + args).join(" ")}` failed" unless ok
  end

  # As Homebrew's: runs the command with the shell's name appended, one file per shell.
  def generate_completions_from_executable(*commands, base_name: nil, shells: %i[bash zsh fish],
                                           shell_parameter_format: nil)
    raise "check_formula.rb knows only the plain shell argument" unless shell_parameter_format.nil?

    executable = commands.first.to_s
    base_name ||= executable.start_with?(bin.to_s) ? File.basename(executable) : name
    paths = {
      bash: bash_completion/base_name,
      zsh:  zsh_completion/"_#{base_name}",
      fish: fish_completion/"#{base_name}.fish",
    }
    shells.each do |shell|
      out, status = Open3.capture2({ "SHELL" => shell.to_s }, *commands.map(&:to_s), shell.to_s)
      raise "completions for #{shell} failed" unless status.success?

      paths.fetch(shell).dirname.mkpath
      paths.fetch(shell).write(out)
    end
  end

  # What a test block uses.
  def testpath = @testpath ||= Pathname(Dir.mktmpdir("formula-test"))

  def shell_output(cmd, result = 0)
    out, status = Open3.capture2(cmd)
    raise "`#{cmd}` exited #{status.exitstatus}, expected #{result}" unless status.exitstatus == result

    out
  end

  def assert_match(expected, actual)
    found = expected.is_a?(Regexp) ? expected.match?(actual) : actual.include?(expected)
    raise "expected #{expected.inspect} in #{actual.inspect}" unless found
  end
end

# The service block's DSL: records each setting; an unknown one fails.
class ServiceBlock
  KNOWN = %i[run keep_alive throttle_interval process_type log_path error_log_path
             environment_variables working_dir restart_delay run_type require_root nice].freeze

  attr_reader :values

  def initialize(formula)
    @formula = formula
    @values = {}
  end

  %i[opt_bin opt_prefix var bin].each { |m| define_method(m) { @formula.public_send(m) } }

  def method_missing(name, *args, **opts)
    raise NoMethodError, "the service block uses `#{name}`, which check_formula.rb does not know" unless KNOWN.include?(name)

    @values[name] = opts.empty? ? args.first : opts
  end

  def respond_to_missing?(name, include_private = false) = KNOWN.include?(name) || super
end

load FORMULA.to_s
klass = Object.const_get(:ClaudeTokend)
spec = klass.spec

check(spec[:homepage] == EXPECTED_REPO, "homepage is the repository in Cargo.toml (#{spec[:homepage]})")
check(spec[:url] == "#{EXPECTED_REPO}.git" && spec[:head] == "#{EXPECTED_REPO}.git",
      "url and head are the repository's git URL")
check(spec.dig(:url_opts, :tag) == "v#{EXPECTED_VERSION}",
      "the tag is v#{EXPECTED_VERSION}, the version in Cargo.toml (formula: #{spec.dig(:url_opts, :tag)})")
check(spec[:license] == { any_of: %w[MIT Apache-2.0] }, "license is MIT OR Apache-2.0, as in Cargo.toml")
check(spec[:depends].include?({ "rust" => :build }), "rust is a build dependency")

Dir.mktmpdir("homebrew") do |dir|
  formula = klass.new(Pathname(dir))
  ENV["CARGO_TARGET_DIR"] = (REPO/"target").to_s
  # Homebrew runs `install` in the unpacked source tree: here, the repository.
  Dir.chdir(REPO) { formula.install }

  expected = {
    formula.bin/"claude-tokend" => :executable,
    formula.man1/"claude-tokend.1" => :file,
    formula.bash_completion/"claude-tokend" => :file,
    formula.zsh_completion/"_claude-tokend" => :file,
    formula.fish_completion/"claude-tokend.fish" => :file,
  }
  expected.each do |path, kind|
    ok = kind == :executable ? path.executable? && path.file? : path.file? && path.size.positive?
    check(ok, "install puts #{path.relative_path_from(formula.prefix)} in the keg")
  end
  pages = formula.man1.glob("*.1").map { |p| p.basename.to_s }
  check(pages.include?("claude-tokend-service-install.1"), "one man page per command (#{pages.size} pages)")
  check(formula.bash_completion.join("claude-tokend").read.include?("complete -F"),
        "the bash completion is a bash completion script")

  # Homebrew links opt/<name> to the keg; the service runs through that link.
  formula.opt_prefix.dirname.mkpath
  File.symlink(formula.prefix, formula.opt_prefix)
  service = ServiceBlock.new(formula)
  service.instance_eval(&spec.fetch(:service))
  run = Array(service.values[:run]).map(&:to_s)
  check(run == [(formula.opt_bin/"claude-tokend").to_s] && File.executable?(run.first),
        "the service runs the installed program in the foreground (#{run.join(" ")})")
  check(service.values[:keep_alive] == { successful_exit: false },
        "the service is kept alive after a failure, not after a clean stop (as launchd/'s agent)")
  check(service.values[:throttle_interval] == 30, "at most one start every 30 seconds (as launchd/'s agent)")
  logs = [service.values[:log_path], service.values[:error_log_path]].map(&:to_s)
  check(logs.all? { |l| l.start_with?("#{formula.var}/log/") }, "logs go to #{formula.var}/log")

  formula.instance_eval(&spec.fetch(:test))
  check(true, "the formula's test block passes against the installed program")
  FileUtils.rm_rf(formula.testpath)
  check(formula.caveats.include?("brew services start claude-tokend"), "caveats say how to start the service")
end

exit($failures.zero? ? 0 : 1)
