# The documents libappsignal returns, read back the way the AppSignal gem reads them: JSON.parse of
# `transaction_to_json` (the gem's Transaction#to_h, which its testing helpers inspect),
# `span_to_json` (Span#to_map of the Elixir package) and `diagnose` (the `appsignal diagnose`
# command, whose agent section is printed here the way the gem prints it). Every field the language
# packages read is checked; any difference is a failure (exit 1).
#
#   ruby app/shapes.rb <scratch directory>       (run.sh runs it after building the extension)
require "json"
require "tmpdir"
require File.expand_path("../lib/appsignal_example", __dir__)

module Shapes
  FAILURES = []

  module_function

  def check(what, ok)
    FAILURES << what unless ok
  end

  def check_eq(what, actual, expected)
    return if actual == expected

    FAILURES << "#{what}: expected #{expected.inspect[0, 120]}, got #{actual.inspect[0, 120]}"
  end

  def data_map(hash)
    hash.each_with_object(AppsignalExt::Data.map) do |(k, v), data|
      case v
      when Integer then data.set_integer(k, v)
      else data.set_string(k, v.to_s)
      end
    end
  end

  def data_array(list)
    list.each_with_object(AppsignalExt::Data.array) { |line, data| data.append_string(line) }
  end

  # An event of `events` as the gem's spec matcher `include_event` finds it: a `hash_including` of
  # these fields (with its defaults) against each entry of the top-level list, whatever the depth
  # the event was recorded at.
  def find_event(events, expected)
    wanted = { "body" => "", "body_format" => 0, "count" => 1, "title" => "" }.merge(expected)
    events.find { |event| wanted.all? { |key, value| event[key] == value } }
  end

  # The gem's Transaction#to_h.
  def transaction
    txn = AppsignalExt.start_transaction("shapes-1", "web", 0)
    txn.set_action("ShapesController#show")
    txn.start_event(0)
    txn.start_event(0)
    txn.finish_event("sql.active_record", "User Load", "SELECT * FROM users WHERE id = 1", 1, 0)
    txn.finish_event("process_action.action_controller", "", "", 0, 0)
    backtrace = ["app/controllers/shapes_controller.rb:3:in `show'", "config.ru:1"]
    txn.set_error("RuntimeError", "boom", data_array(backtrace))
    txn.set_sample_data("tags", data_map("long" => "x" * 10_050, "utf8" => "é" * 10_001, "n" => 1))
    h = JSON.parse(txn.to_json)

    error = h.fetch("error")
    check_eq "transaction error name", error["name"], "RuntimeError"
    check_eq "transaction error message", error["message"], "boom"
    check "transaction error has no class key", !error.key?("class")
    check_eq "transaction error backtrace (a JSON string)", JSON.parse(error.fetch("backtrace")), backtrace

    events = h.fetch("events")
    outer = find_event(events, "name" => "process_action.action_controller")
    # Nested in the outer event, yet in the top-level list, with its body as given (sanitised only
    # where it leaves the process).
    sql = find_event(events, "name" => "sql.active_record", "title" => "User Load",
                             "body" => "SELECT * FROM users WHERE id = 1", "body_format" => 1)
    check "the outer event is in events (title and body empty when none)", outer
    check "the nested SQL event is in the top-level events", sql
    check_eq "events in the order they started", events.map { |e| e["name"] },
             %w[process_action.action_controller sql.active_record]
    [outer, sql].compact.each do |event|
      %w[name title body body_format count start duration gc_duration parent_index].each do |key|
        check "event #{event["name"]} has #{key}", event.key?(key)
      end
      check "event #{event["name"]} has no children (the list is flat)", !event.key?("children")
      check "event #{event["name"]} body_format is an Integer", event["body_format"].is_a?(Integer)
    end
    check_eq "the outer event is at the top", outer && outer["parent_index"], -1
    check_eq "the SQL event's parent", sql && events[sql["parent_index"]], outer

    tags = h.dig("sample_data", "tags")
    check_eq "a long tag value is cut", tags["long"], "#{"x" * 10_000}..."
    check_eq "a multi-byte tag value is cut by characters", tags["utf8"], "#{"é" * 10_000}..."
    check_eq "a numeric tag", tags["n"], 1
    txn.complete
    txn.free
  end

  # The Elixir package's Span.to_map, from Ruby.
  def span
    root = AppsignalExt.create_root_span_with_timestamp("web", 1_588_930_137, 508_176_000)
    m = JSON.parse(root.to_json)
    check_eq "span trace_id length", m["trace_id"].to_s.length, 16
    check_eq "span span_id", m["span_id"], root.span_id
    check_eq "span span_id length", root.span_id.to_s.length, 8
    check_eq "root parent_span_id", m["parent_span_id"], ""
    check_eq "unset name", m["name"], ""
    check_eq "root namespace", m["namespace"], "web"
    check_eq "start_time_seconds", m["start_time_seconds"], 1_588_930_137
    check_eq "start_time_nanoseconds", m["start_time_nanoseconds"], 508_176_000
    check_eq "closed while open", m["closed"], false

    root.set_name("GET /shapes")
    root.set_attribute_string("s", "text")
    root.set_attribute_int("i", 2**63 - 1)
    root.set_attribute_bool("b", true)
    root.set_attribute_double("d", 1.5)
    root.set_attribute_string("big", "bigint:#{2**70}")
    root.set_sample_data("params", data_map("key" => "value"))
    root.add_error("RuntimeError", "boom", data_array(["lib/a.ex:1"]))
    m = JSON.parse(root.to_json)
    check_eq "attributes keep their types", m["attributes"],
             { "s" => "text", "i" => 2**63 - 1, "b" => true, "d" => 1.5, "big" => "bigint:#{2**70}" }
    check_eq "sample data values are JSON strings", m["sample_data"], { "params" => '{"key":"value"}' }
    check_eq "span error", m["error"], { "name" => "RuntimeError", "message" => "boom",
                                         "backtrace_json" => '["lib/a.ex:1"]' }

    child = root.create_child
    c = JSON.parse(child.to_json)
    check_eq "child trace_id", c["trace_id"], m["trace_id"]
    check_eq "child parent_span_id", c["parent_span_id"], root.span_id
    check_eq "child namespace", c["namespace"], ""
    child.close
    check_eq "a closed span's to_json", child.to_json, nil
    root.close
    check_eq "a closed root's to_json", root.to_json, nil
    child.free
    root.free
  end

  # The gem's agent_diagnostic_test_definition: component → category → test → label, and the
  # words it prints for booleans.
  DIAGNOSE_TESTS = {
    "extension" => { "config" => { "valid" => "Configuration" } },
    "agent" => {
      "boot" => { "started" => "Started" },
      "host" => { "uid" => "Process user id", "gid" => "Process user group id" },
      "config" => { "valid" => "Configuration" },
      "logger" => { "started" => "Logger" },
      "working_directory_stat" => { "uid" => "Working directory user id",
                                    "gid" => "Working directory user group id",
                                    "mode" => "Working directory permissions" },
      "lock_path" => { "created" => "Lock path" },
    },
  }.freeze
  # What it prints for a boolean result.
  DIAGNOSE_WORDS = {
    "config.valid" => { true => "valid", false => "invalid" },
    "boot.started" => { true => "started", false => "not started" },
    "logger.started" => { true => "started", false => "not started" },
    "lock_path.created" => { true => "writable", false => "not writable" },
  }.freeze

  # Parses and prints the report as `appsignal diagnose` does; a "-" (no result) is a failure here,
  # where the agent runs with a valid configuration.
  def diagnose(workdir)
    report = JSON.parse(AppsignalExt.diagnose)
    check "no top-level error", !report.key?("error")
    puts "Agent diagnostics"
    DIAGNOSE_TESTS.each do |component, categories|
      puts "  #{component == "agent" ? "Agent tests" : "Extension tests"}"
      categories.each do |category, tests|
        tests.each do |test, label|
          leaf = report.fetch(component, {}).fetch(category, {}).fetch(test, {})
          value = leaf["result"]
          words = DIAGNOSE_WORDS["#{category}.#{test}"]
          shown = words ? words[value] : value
          puts "    #{label}: #{shown.nil? ? "-" : shown}"
          puts "      Error: #{leaf["error"]}" if leaf["error"]
          puts "      Output: #{leaf["output"]}" if leaf["output"]
          check "diagnose #{component}.#{category}.#{test} has a result", !value.nil?
        end
      end
    end
    agent = report.fetch("agent")
    check_eq "boot started", agent.dig("boot", "started", "result"), true
    check_eq "host uid", agent.dig("host", "uid", "result"), Process.uid
    check_eq "host gid", agent.dig("host", "gid", "result"), Process.gid
    stat = File.stat(workdir)
    check_eq "working directory uid", agent.dig("working_directory_stat", "uid", "result"), stat.uid
    check_eq "working directory mode", agent.dig("working_directory_stat", "mode", "result"), stat.mode
    check_eq "lock path created", agent.dig("lock_path", "created", "result"), true
    check_eq "extension config valid", report.dig("extension", "config", "valid", "result"), true
    check_eq "our report under leader_election", report.dig("leader_election", "role"), "leader"
  end

  def run(scratch)
    workdir = File.join(scratch, "wd")
    AppsignalExample.start(
      push_api_key: "shapes-key", push_api_endpoint: "http://127.0.0.1:9", # nothing listens: fine
      working_directory_path: workdir, app_name: "shapes", app_env: "example",
      log_file_path: File.join(scratch, "appsignal.log")
    )
    role = AppsignalExample.await_role
    check_eq "role", role, "leader"
    transaction
    span
    diagnose(workdir)
    AppsignalExample.stop
    if FAILURES.empty?
      puts "shapes: all checks passed (transaction_to_json, span_to_json, diagnose)"
    else
      warn FAILURES.map { |f| "shapes: FAILED #{f}" }
      exit 1
    end
  end
end

Shapes.run(ARGV.fetch(0) { Dir.mktmpdir("appsignal-shapes") })
