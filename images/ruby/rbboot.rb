# Bootstrap of the Ruby sandbox: runs the code with its parameters and JSON at hand.
#
# The runner starts this before a request arrives, so the interpreter and JSON are already
# loaded; it then blocks on fd 3 until the request arrives: {"parameters": {...}, "guard": ...}.
# The guard is only what the runner refuses in the kernel (processes, sockets): Ruby has no
# in-process layer, so it is not read here. The code sees the parameters as the Hash
# `parameters` at its top level and as `$parameters` everywhere (methods do not see top-level
# locals), and JSON without a `require`. The value of a top-level local `output` is
# sent to the runner on fd 4 as {"value": ...}, or {"error": ...} when JSON cannot write it.
#
# Outside a container (the srt and inprocess modes) there is no runner to hold fds 3 and 4:
# ATHENA_PARAMS_FILE names the parameters' file, and ATHENA_OUTPUT_FILE a file (srt) or
# ATHENA_VALUE_FD a pipe (inprocess) for `output`.
#
# The code runs in TOPLEVEL_BINDING, so its top-level locals (`output`) can be read afterwards:
# everything here lives in a module, so that binding holds no local of this file.
require 'json'

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
  end

  def main(path)
    $stdout.sync = true # as Python's -u: what the code printed is there when it is killed
    $stderr.sync = true
    raw = read_parameters
    channel = output_channel
    $parameters = (raw.empty? ? {} : JSON.parse(raw))['parameters'] || {}
    TOPLEVEL_BINDING.local_variable_set(:parameters, $parameters)
    ARGV.clear
    $PROGRAM_NAME = path
    source = File.read(path, encoding: 'UTF-8')
    status = run(source, path)
    send_output(channel)
    exit(status)
  end

  def run(source, path)
    TOPLEVEL_BINDING.eval(source, path, 1)
    0
  rescue SystemExit => e
    e.status
  rescue Exception => e # rubocop:disable Lint/RescueException -- the code's, all of them
    report(e)
    1
  end
end

AthenaBoot.main(ARGV.fetch(0))
