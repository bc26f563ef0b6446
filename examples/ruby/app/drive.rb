# The client side of run.sh: plain HTTP with Net::HTTP, deadlines instead of fixed sleeps.
#
#   ruby drive.rb wait URL SERVER_PID TIMEOUT_S        until URL answers 200 (fails fast if the pid dies)
#   ruby drive.rb roles STATE_DIR SERVER COUNT TIMEOUT_S [one-leader|all-clients|any]
#                                                      until COUNT worker notes exist; then exactly one
#                                                      leader among them (one-leader, the default), or
#                                                      all clients (all-clients: the master leads)
#   ruby drive.rb handover WORKDIR STATE_DIR SERVER TIMEOUT_S
#                                                      until the master's note says it handed the
#                                                      leadership over and a worker holds the lock
#   ruby drive.rb kill-leader BASE_URL WORKDIR STATE_DIR SERVER COUNT TIMEOUT_S
#                                                      SIGKILLs the leader worker once it is idle (see
#                                                      cmd_kill_leader), waits for a new leader and a
#                                                      replacement worker
#   ruby drive.rb send BASE_URL EXPECTED_FILE          sends the requests; adds what the app must have
#                                                      recorded to EXPECTED_FILE (JSON)
#   ruby drive.rb check RECEIVER_URL EXPECTED_FILE TIMEOUT_S
#                                                      polls GET /summary until it equals EXPECTED_FILE;
#                                                      prints the comparison; exit 1 on any difference.
#                                                      RECEIVER_URL is the reference Push API receiver or
#                                                      examples/otlp_receiver.py (told apart by its
#                                                      summary; see from_otlp)
#
# Request counts: OK_REQUESTS (200), ERROR_REQUESTS (40), WORK_REQUESTS (20), WORK_N (1000),
# CLIENT_THREADS (8). Every request uses a new connection so that the server's workers share them.
require "json"
require "net/http"
require "uri"

def monotonic
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def get(url)
  Net::HTTP.get_response(URI(url))
end

def cmd_wait(url, pid, timeout)
  deadline = monotonic + timeout
  loop do
    begin
      return puts("server answers at #{url}") if get(url).code == "200"
    rescue SystemCallError, IOError, Net::ReadTimeout, Net::OpenTimeout
      # not listening yet
    end
    begin
      Process.kill(0, pid)
    rescue Errno::ESRCH
      abort "server (pid #{pid}) exited before answering #{url}"
    end
    abort "server did not answer #{url} within #{timeout} s" if monotonic > deadline
    sleep 0.05
  end
end

def worker_notes(dir, server)
  Dir[File.join(dir, "#{server}-[0-9]*.json")].map { |f| JSON.parse(File.read(f)) }
end

def cmd_roles(dir, server, count, timeout, check = "one-leader")
  deadline = monotonic + timeout
  notes = []
  loop do
    notes = worker_notes(dir, server)
    break if notes.size >= count
    abort "only #{notes.size} of #{count} #{server} workers noted their role within #{timeout} s" if monotonic > deadline
    sleep 0.05
  end
  notes.sort_by! { |n| [n["index"], n["pid"]] }
  notes.each do |n|
    how = n["inherited"] ? "inherited from the master" : "started in the worker"
    puts format("  %s worker %d pid %-7d %-7s (agent %s)", server, n["index"], n["pid"], n["role"], how)
  end
  roles = notes.map { |n| n["role"] }
  case check
  when "any" then nil
  when "all-clients"
    abort "expected #{notes.size} clients (the master leads), got #{roles}" unless roles.all?("client")
  else
    unless roles.count("leader") == 1 && roles.count("client") == notes.size - 1
      abort "expected exactly one leader and #{notes.size - 1} clients, got #{roles}"
    end
  end
end

def read_note(dir, name)
  JSON.parse(File.read(File.join(dir, "#{name}.json")))
rescue Errno::ENOENT
  nil
end

def lock_holder(workdir)
  pid = File.read(File.join(workdir, "agent.lock")).split(";").first.to_i
  pid.positive? ? pid : nil
rescue Errno::ENOENT
  nil
end

def alive?(pid)
  Process.kill(0, pid)
  stat = File.read("/proc/#{pid}/stat") rescue nil # rubocop:disable Style/RescueModifier
  !(stat && stat[/\) (\S)/, 1] == "Z")
rescue Errno::ESRCH
  false
end

def cmd_handover(workdir, dir, server, timeout)
  deadline = monotonic + timeout
  note = nil
  loop do
    note = read_note(dir, "#{server}-master")
    break if note && note["handed_over"]
    abort "the #{server} master did not hand the leadership over within #{timeout} s (#{note.inspect})" if monotonic > deadline
    sleep 0.02
  end
  # The client that takes over writes its pid into the lock file a moment after the master let go.
  workers = worker_notes(dir, server).map { |n| n["pid"] }
  holder = nil
  loop do
    holder = lock_holder(workdir)
    break if workers.include?(holder)
    abort "after the hand-over the lock holder is pid #{holder.inspect}, not one of the workers #{workers}" if monotonic > deadline
    sleep 0.005
  end
  puts format("  %s master pid %d stopped its agent (now %s): leadership handed over to worker pid %d",
              server, note["pid"], note["role"], holder)
end

# GET /role?pid=PID on new connections until that worker answers (other workers answer 409).
def role_of(base, pid, deadline)
  loop do
    begin
      res = get("#{base}/role?pid=#{pid}")
      return JSON.parse(res.body) if res.code == "200"
    rescue SystemCallError, IOError, Net::ReadTimeout, Net::OpenTimeout
      # retry
    end
    return nil if monotonic > deadline
  end
end

# The leader is the lock holder (`<workdir>/agent.lock` holds `pid;version;started_at`). No request
# is in flight (the driver sends none meanwhile); the victim must also be idle: what a process
# recorded is pre-aggregated in memory and flushed every 100 ms, and a killed process loses its
# unflushed pre-aggregate. So ask the victim itself (/role?pid=…) until its `sender.idle` is true
# (everything it recorded is journaled), then SIGKILL it. Then wait for a new leader (another live
# lock holder) and for the server's replacement worker (a new note).
def cmd_kill_leader(base, workdir, dir, server, count, timeout)
  deadline = monotonic + timeout
  victim = lock_holder(workdir) or abort "no lock holder in #{workdir}/agent.lock"
  workers = worker_notes(dir, server).map { |n| n["pid"] }
  abort "the leader (pid #{victim}) is not a worker #{workers}" unless workers.include?(victim)
  polls = 0
  loop do
    polls += 1
    state = role_of(base, victim, deadline) or abort "worker #{victim} did not answer /role within #{timeout} s"
    abort "pid #{victim} is #{state["role"]}, not the leader" unless state["role"] == "leader"
    break if state["idle"] == true
    abort "leader pid #{victim} not idle within #{timeout} s" if monotonic > deadline
    sleep 0.01
  end
  File.delete(*Dir[File.join(dir, "#{server}-#{victim}.json")])
  killed = monotonic
  Process.kill(:KILL, victim)
  puts format("  SIGKILL leader pid %d (idle: everything it recorded journaled; %d /role poll%s)",
              victim, polls, polls == 1 ? "" : "s")
  new_leader = nil
  loop do
    holder = lock_holder(workdir)
    if holder && holder != victim && alive?(holder)
      new_leader = holder
      break
    end
    abort "no new leader within #{timeout} s after the kill" if monotonic > deadline
    sleep 0.005
  end
  puts format("  new leader pid %d after %.0f ms (%s)", new_leader, (monotonic - killed) * 1000,
              workers.include?(new_leader) ? "a surviving worker" : "a worker started after the kill")
  loop do
    notes = worker_notes(dir, server)
    fresh = notes.reject { |n| workers.include?(n["pid"]) }
    if notes.size >= count && !fresh.empty?
      fresh.each do |n|
        puts format("  replacement worker %d pid %d: %s (agent %s)", n["index"], n["pid"], n["role"],
                    n["inherited"] ? "inherited" : "started in the worker")
      end
      break
    end
    abort "#{server} did not replace the killed worker within #{timeout} s" if monotonic > deadline
    sleep 0.02
  end
end

def cmd_send(base, expected_file)
  ok = Integer(ENV.fetch("OK_REQUESTS", "200"))
  errors = Integer(ENV.fetch("ERROR_REQUESTS", "40"))
  work = Integer(ENV.fetch("WORK_REQUESTS", "20"))
  work_n = Integer(ENV.fetch("WORK_N", "1000"))
  threads = Integer(ENV.fetch("CLIENT_THREADS", "8"))

  plan = [["/ok", 200]] * ok + [["/error", 500]] * errors + [["/work?n=#{work_n}", 200]] * work
  queue = Queue.new
  plan.shuffle(random: Random.new(42)).each { |req| queue << req }
  threads.times { queue << nil }
  failures = Queue.new
  pids = Hash.new(0)
  lock = Mutex.new
  started = monotonic
  threads.times.map do
    Thread.new do
      while (req = queue.pop)
        path, want = req
        res = get("#{base}#{path}")
        failures << "#{path}: status #{res.code}, expected #{want}" unless res.code.to_i == want
        lock.synchronize { pids[res["X-Worker-Pid"]] += 1 }
      end
    end
  end.each(&:join)
  elapsed = monotonic - started
  abort "requests failed:\n#{Array.new(failures.size) { failures.pop }.first(10).join("\n")}" unless failures.empty?
  puts format("sent %d requests in %.2f s (%d /ok, %d /error, %d /work?n=%d); served by pids %s",
              plan.size, elapsed, ok, errors, work, work_n,
              pids.sort.map { |pid, n| "#{pid}:#{n}" }.join(" "))

  # What the app must have recorded (see config.ru and AppsignalExample.monitor). Series are named
  # as the receiver names them: name{k=v,...} with the tags sorted.
  # Per-action series: recorded by the library itself when each transaction completes
  # (namespace "web"); the rest are the app's custom metrics.
  actions = { "/ok" => ok, "/error" => errors, "/work" => work }
  add = {
    "counters" => {
      "transaction_error_count{action=/error,namespace=web}" => errors,
      "http_requests{path=/ok,status=200}" => ok,
      "http_requests{path=/error,status=500}" => errors,
      "http_requests{path=/work,status=200}" => work,
    },
    # nil sum: the durations are not known to the client, only their number.
    "distributions" => {
      "work_items{}" => { "count" => work, "sum" => work * work_n },
    },
    "gauges" => { "work_size{}" => work_n },
    # The transactions with an error are sampled (the others are fast, and the sample rate is 0).
    "samples" => errors,
  }
  actions.each do |action, n|
    add["counters"]["transaction_count{action=#{action},namespace=web}"] = n
    add["distributions"]["transaction_duration{action=#{action},namespace=web}"] = { "count" => n, "sum" => nil }
    # One event group per transaction: process_action.rack → group "rack".
    add["distributions"]["event_duration{action=#{action},group=rack,namespace=web}"] = { "count" => n, "sum" => nil }
  end
  add["counters"].delete_if { |_, v| v.zero? }
  add["distributions"].delete_if { |_, v| v["count"].zero? }
  add["gauges"] = {} if work.zero?

  expected = File.exist?(expected_file) ? JSON.parse(File.read(expected_file)) : {}
  %w[counters distributions gauges].each { |k| expected[k] ||= {} }
  add["counters"].each { |k, v| expected["counters"][k] = expected["counters"].fetch(k, 0) + v }
  add["distributions"].each do |k, v|
    e = expected["distributions"][k] ||= { "count" => 0, "sum" => v["sum"] && 0 }
    e["count"] += v["count"]
    e["sum"] = e["sum"] && v["sum"] && e["sum"] + v["sum"]
  end
  expected["gauges"].merge!(add["gauges"])
  expected["samples"] = expected.fetch("samples", 0) + add["samples"]
  File.write(expected_file, JSON.pretty_generate(expected))
end

def compare(expected, summary)
  rows = []
  expected["counters"].sort.each do |k, v|
    got = summary.dig("counters", k)
    rows << ["counter #{k}", v.to_s, got.nil? ? "-" : format("%g", got), got == v.to_f]
  end
  expected["distributions"].sort.each do |k, v|
    got = summary.dig("distributions", k) || {}
    sent = "count #{v["count"]}" + (v["sum"] ? " sum #{v["sum"]}" : "")
    received = "count #{got["count"] || "-"}" + (v["sum"] ? " sum #{got["sum"] ? format("%g", got["sum"]) : "-"}" : "")
    equal = got["count"] == v["count"] && (v["sum"].nil? || (got["sum"].to_f - v["sum"]).abs <= v["sum"].abs * 1e-9)
    rows << ["distribution #{k}", sent, received, equal]
  end
  expected["gauges"].sort.each do |k, v|
    got = summary.dig("gauges", k)
    rows << ["gauge #{k}", v.to_s, got.nil? ? "-" : format("%g", got), got == v.to_f]
  end
  if expected["samples"]
    # A window keeps at most 200 samples; the rest are counted as dropped.
    kept_and_dropped = summary["samples"] + summary["dropped_samples"]
    rows << ["samples kept + dropped (transactions with an error)", expected["samples"].to_s,
             kept_and_dropped.to_s, kept_and_dropped == expected["samples"]]
  end
  # Anything the receiver has that was not sent is a difference too.
  %w[counters distributions gauges].each do |kind|
    (summary.fetch(kind, {}).keys - expected[kind].keys).sort.each do |k|
      rows << ["#{kind.chomp("s")} #{k}", "-", summary[kind][k].to_s, false]
    end
  end
  rows
end

# The OTLP receiver's summary (examples/otlp_receiver.py, every request parsed with the official
# protobuf classes) in the reference receiver's terms. Its counters, gauges and distributions are
# keyed name{k=v,...} the same way. The agent's own counters appsignal.agent.dropped_updates and
# .dropped_samples become the reference receiver's fields (any other appsignal.agent.* counter stays
# a series nobody sent: a difference). A sample is a root span (a transaction; its events are child
# spans); "otlp" keeps what only this receiver tells: root spans without the `exception` event
# (every sampled transaction here has an error) and the child spans whose parent is a root span.
def from_otlp(summary)
  counters = summary.fetch("counters", {}).dup
  dropped_updates = counters.delete("appsignal.agent.dropped_updates{}").to_i
  dropped_samples = counters.delete("appsignal.agent.dropped_samples{}").to_i
  spans = summary.fetch("spans", [])
  roots = spans.select { |s| s["parent_span_id"].to_s.empty? }
  root_ids = roots.map { |s| s["span_id"] }
  {
    "counters" => counters,
    "gauges" => summary.fetch("gauges", {}),
    "distributions" => summary.fetch("distributions", {}),
    "samples" => roots.size,
    "dropped_samples" => dropped_samples,
    "dropped_updates" => dropped_updates,
    "payloads" => summary.fetch("requests", {}).values.sum,
    "duplicates" => summary["duplicates"],
    "unauthorized" => 0, # OTLP has no key check here
    "bad_requests" => summary["bad_requests"],
    "otlp" => {
      "requests" => summary["requests"],
      "roots_without_exception" => roots.count { |s| s["events"].none? { |e| e["name"] == "exception" } },
      "event_spans" => spans.count { |s| root_ids.include?(s["parent_span_id"]) },
    },
  }
end

def otlp_rows(summary)
  otlp = summary["otlp"] or return []
  [
    ["root spans without an exception event", "0", otlp["roots_without_exception"].to_s,
     otlp["roots_without_exception"].zero?],
    # One event (process_action.rack) per transaction: one child span per root span.
    ["event spans (children of the root spans)", summary["samples"].to_s, otlp["event_spans"].to_s,
     otlp["event_spans"] == summary["samples"]],
  ]
end

def cmd_check(receiver, expected_file, timeout)
  expected = JSON.parse(File.read(expected_file))
  deadline = monotonic + timeout
  started = monotonic
  rows = summary = nil
  loop do
    summary = JSON.parse(get("#{receiver}/summary").body)
    summary = from_otlp(summary) if summary.key?("requests") && summary.key?("spans")
    rows = compare(expected, summary) + otlp_rows(summary)
    break if rows.all? { |r| r[3] } || monotonic > deadline
    sleep 0.05
  end
  width = rows.map { |r| r[0].size }.max
  sent_width = [rows.map { |r| r[1].size }.max, 4].max
  got_width = [rows.map { |r| r[2].size }.max, 8].max
  puts format("%-#{width}s  %#{sent_width}s  %#{got_width}s", "series", "sent", "received")
  rows.each do |s, sent, got, ok|
    puts format("%-#{width}s  %#{sent_width}s  %#{got_width}s  %s", s, sent, got, ok ? "ok" : "DIFFERENT")
  end
  puts format("receiver: %d payloads, %d duplicates, %d unauthorized, %d bad requests, %d dropped updates, " \
              "%d dropped samples", summary["payloads"], summary["duplicates"], summary["unauthorized"],
              summary["bad_requests"], summary["dropped_updates"], summary["dropped_samples"])
  if summary["otlp"]
    puts format("OTLP requests (parsed with the official protobuf classes): %d metrics, %d traces, %d logs",
                *summary["otlp"]["requests"].values_at("metrics", "traces", "logs"))
  end
  bad = rows.reject { |r| r[3] }
  problems = []
  problems << "#{bad.size} series differ" unless bad.empty?
  %w[unauthorized bad_requests dropped_updates].each do |k|
    problems << "#{k}: #{summary[k]}" unless summary[k].zero?
  end
  abort "FAILED after #{format("%.1f", monotonic - started)} s: #{problems.join(", ")}" unless problems.empty?
  puts format("every total received equals what was sent (%.2f s after the server stopped).", monotonic - started)
end

case ARGV.shift
when "wait" then cmd_wait(ARGV[0], Integer(ARGV[1]), Float(ARGV[2]))
when "roles" then cmd_roles(ARGV[0], ARGV[1], Integer(ARGV[2]), Float(ARGV[3]), ARGV[4] || "one-leader")
when "handover" then cmd_handover(ARGV[0], ARGV[1], ARGV[2], Float(ARGV[3]))
when "kill-leader" then cmd_kill_leader(ARGV[0], ARGV[1], ARGV[2], ARGV[3], Integer(ARGV[4]), Float(ARGV[5]))
when "send" then cmd_send(ARGV[0], ARGV[1])
when "check" then cmd_check(ARGV[0], ARGV[1], Float(ARGV[2]))
else abort "usage: ruby drive.rb wait|roles|handover|kill-leader|send|check …"
end
