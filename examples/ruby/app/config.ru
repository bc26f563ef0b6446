# The example Rack app. Each recorded request goes through AppsignalExample.monitor(path) and adds
# to a custom counter http_requests{path,status}.
#
#   GET /ok          200
#   GET /error       raises inside monitor; answered 500
#   GET /work?n=N    sums N squares; gauge work_size = N, distribution work_items += N
#   GET /ping        not recorded (run.sh polls it until the server answers)
#   GET /role[?pid=P] not recorded: this worker's pid, role, sender.idle and lock holder as JSON;
#                    with `pid`, answered 409 by any other worker (the driver retries on a new
#                    connection until the wanted worker answers)
require File.expand_path("boot", __dir__)

class ExampleApp
  TEXT = { "Content-Type" => "text/plain" }.freeze

  def call(env)
    path = env["PATH_INFO"]
    case path
    when "/ping"
      respond(200, "pong")
    when "/role"
      role(Rack::Utils.parse_query(env["QUERY_STRING"]))
    when "/ok"
      recorded(path) { respond(200, "ok") }
    when "/error"
      recorded(path) { raise "boom (on purpose)" }
    when "/work"
      recorded(path) { work(Rack::Utils.parse_query(env["QUERY_STRING"])) }
    else
      respond(404, "not found")
    end
  end

  private

  def work(params)
    n = Integer(params.fetch("n", "1000")).clamp(0, 1_000_000)
    total = 0
    n.times { |i| total += i * i }
    AppsignalExample.set_gauge("work_size", n)
    AppsignalExample.add_distribution_value("work_items", n)
    respond(200, "sum of squares below #{n}: #{total}")
  end

  def role(params)
    want = params["pid"]
    return respond(409, "not pid #{want}") if want && Integer(want) != Process.pid
    d = AppsignalExample.election
    body = JSON.generate(pid: Process.pid, role: d["role"], idle: d.dig("sender", "idle"),
                         lock_holder: d.dig("lock", "holder_pid"))
    [200, { "Content-Type" => "application/json", "X-Worker-Pid" => Process.pid.to_s }, [body]]
  end

  def recorded(path)
    status, headers, body =
      begin
        AppsignalExample.monitor(path) { yield }
      rescue StandardError => e
        respond(500, "error: #{e.message}")
      end
    AppsignalExample.increment_counter("http_requests", 1, path: path, status: status)
    [status, headers, body]
  end

  def respond(status, text)
    [status, TEXT.merge("X-Worker-Pid" => Process.pid.to_s), ["#{text}\n"]]
  end
end

run ExampleApp.new
