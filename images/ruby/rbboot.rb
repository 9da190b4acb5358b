# Bootstrap of the Ruby sandbox: runs the code with its parameters and JSON at hand.
#
# The runner starts this before a request arrives, so the interpreter and JSON are already
# loaded; it then blocks on fd 3 until the request arrives: {"parameters": {...}, "guard": ...}.
# Where the guard forbids processes (strict), AthenaGuard below replaces every way Ruby starts
# one, so a refusal is an Errno::EPERM in the code and a {"policy": ...} line on the output
# channel, in every mode; in docker mode the runner also refuses processes in the kernel, which
# is the enforcement (the code shares this process and can get round the replacement, through
# Fiddle for one). The code sees the parameters as the Hash `parameters` at its top level and
# as `$parameters` everywhere (methods do not see top-level locals), and JSON without a
# `require`. The value of a top-level local `output` is sent to the runner on fd 4 as
# {"value": ...}, or {"error": ...} when JSON cannot write it.
#
# Outside a container (the srt and inprocess modes) there is no runner to hold fds 3 and 4:
# ATHENA_PARAMS_FILE names the parameters' file, and ATHENA_OUTPUT_FILE a file (srt) or
# ATHENA_VALUE_FD a pipe (inprocess) for `output`.
#
# The code runs in TOPLEVEL_BINDING, so its top-level locals (`output`) can be read afterwards:
# everything here lives in a module, so that binding holds no local of this file.
require 'json'

# The in-process part of the guard: refusals of process creation the code can read.
module AthenaGuard
  MAX_REPORTED = 20 # as pyboot: more refusals are counted in one summary line
  KERNEL = %i[system spawn exec fork ` syscall].freeze # Kernel#x and Kernel.x
  PROCESS = %i[spawn exec fork daemon].freeze # Process.x
  PIPE_PATHS = %i[read readlines foreach write binread binwrite].freeze # IO.x("|cmd")
  @refused = 0

  class << self
    def install(config, channel)
      return unless config.is_a?(Hash) && config['processes']

      @channel = channel
      @policy = (config['policy'] || 'the policy').to_s
      begin
        require 'pty' # loaded now so that its spawn is replaced too
      rescue LoadError
        nil
      end
      refuse_calls
      refuse_pipes
    end

    def refuse(what, args)
      @refused += 1
      if @refused <= MAX_REPORTED
        shown = args.map { |a| text(a) }.join(' ')[0, 200]
        report('process', "process creation (#{what}) refused", { 'call' => what, 'args' => shown })
      end
      raise Errno::EPERM, "process creation (#{what}) refused (sandbox policy #{@policy})"
    end

    def summarise
      more = @refused - MAX_REPORTED
      report('summary', "#{more} more refusal(s) not listed", { 'count' => more }) if more.positive?
    end

    def pipe?(path)
      path = path.to_path if path.respond_to?(:to_path)
      path.respond_to?(:to_str) && path.to_str.start_with?('|')
    end

    private

    def refuse_calls
      guard = self
      KERNEL.each do |name|
        Kernel.send(:define_method, name) { |*args, **_kw, &_blk| guard.refuse(name.to_s, args) }
        Kernel.send(:private, name)
        Kernel.define_singleton_method(name) { |*args, **_kw, &_blk| guard.refuse(name.to_s, args) }
      end
      PROCESS.each do |name|
        Process.define_singleton_method(name) { |*args, **_kw, &_blk| guard.refuse("Process.#{name}", args) }
      end
      IO.define_singleton_method(:popen) { |*args, **_kw, &_blk| guard.refuse('IO.popen', args) }
      return unless defined?(PTY)

      %i[spawn getpty].each do |name|
        PTY.define_singleton_method(name) { |*args, **_kw, &_blk| guard.refuse("PTY.#{name}", args) }
      end
    end

    # open("|cmd") and IO.read("|cmd") run cmd; any other path goes to the original method.
    def refuse_pipes
      guard = self
      original_open = Kernel.instance_method(:open)
      Kernel.send(:define_method, :open) do |*args, **kw, &blk|
        guard.refuse('open', args) if guard.pipe?(args.first)
        original_open.bind_call(self, *args, **kw, &blk)
      end
      Kernel.send(:private, :open)
      Kernel.define_singleton_method(:open) do |*args, **kw, &blk|
        guard.refuse('Kernel.open', args) if guard.pipe?(args.first)
        original_open.bind_call(self, *args, **kw, &blk)
      end
      PIPE_PATHS.each do |name|
        original = IO.singleton_class.instance_method(name)
        IO.define_singleton_method(name) do |*args, **kw, &blk|
          guard.refuse("IO.#{name}", args) if !(self <= File) && guard.pipe?(args.first)
          original.bind_call(self, *args, **kw, &blk)
        end
      end
    end

    def text(value)
      value.to_s.dup.force_encoding(Encoding::UTF_8).scrub('?')
    rescue StandardError
      '?'
    end

    def report(kind, message, detail)
      line = JSON.generate({ 'policy' => { 'kind' => kind, 'message' => message, 'detail' => detail } })
      # A fresh line first: bytes the code wrote on this channel cannot swallow the report.
      @channel.write("\n#{line}\n")
      @channel.flush
    rescue StandardError
      nil # the code closed the channel: the refusal still stands
    end
  end
end

module AthenaBoot
  BOOT_FILE = File.expand_path(__FILE__)

  module_function

  def read_parameters
    path = ENV.delete('ATHENA_PARAMS_FILE')
    return File.binread(path) if path

    channel = IO.for_fd(3, 'rb', autoclose: true)
    begin
      channel.read
    ensure
      channel.close
    end
  end

  def output_channel
    path = ENV.delete('ATHENA_OUTPUT_FILE')
    return File.open(path, File::WRONLY | File::CREAT | File::TRUNC, 0o600) if path

    IO.for_fd(Integer(ENV.delete('ATHENA_VALUE_FD') || 4), 'wb', autoclose: true)
  end

  def send_output(channel)
    return unless TOPLEVEL_BINDING.local_variable_defined?(:output)

    text = begin
      JSON.generate({ 'value' => TOPLEVEL_BINDING.local_variable_get(:output) })
    rescue StandardError, SystemStackError => e
      JSON.generate({ 'error' => "#{e.class}: #{e.message}" })
    end
    channel.write(text.encode('UTF-8', invalid: :replace, undef: :replace) + "\n")
    channel.flush
  rescue IOError, SystemCallError
    nil # the code closed the channel itself; there is nothing to send then
  end

  # Print an error as Ruby prints an uncaught one, without this bootstrap's frames.
  def report(error)
    trace = (error.backtrace || []).reject { |l| l.start_with?(BOOT_FILE) || l.include?("in `eval'") }
    # With no frame left (a syntax error), full_message would name this file's instead.
    return $stderr.write("#{error.message} (#{error.class})\n") if trace.empty?

    error.set_backtrace(trace)
    $stderr.write(error.full_message(highlight: false, order: :top))
  rescue Exception # rubocop:disable Lint/RescueException -- the code's error may break its own report
    $stderr.write("uncaught #{Exception.instance_method(:class).bind_call(error)}\n") rescue nil
  end

  def main(path)
    $stdout.sync = true # as Python's -u: what the code printed is there when it is killed
    $stderr.sync = true
    raw = read_parameters
    channel = output_channel
    request = raw.empty? ? {} : JSON.parse(raw)
    $parameters = request['parameters'] || {}
    TOPLEVEL_BINDING.local_variable_set(:parameters, $parameters)
    ARGV.clear
    $PROGRAM_NAME = path
    source = File.read(path, encoding: 'UTF-8')
    AthenaGuard.install(request['guard'], channel)
    status = run(source, path)
    AthenaGuard.summarise
    send_output(channel)
    exit(status)
  end

  def run(source, path)
    TOPLEVEL_BINDING.eval(source, path, 1)
    0
  rescue SystemExit => e
    e.status.is_a?(Integer) ? e.status : 1 # the code's subclass may answer anything
  rescue Exception => e # rubocop:disable Lint/RescueException -- the code's, all of them
    report(e)
    1
  end
end

AthenaBoot.main(ARGV.fetch(0))
