# The Ruby side of the example integration: configuration, `monitor`, metric helpers.
#
# The C extension (`appsignal_ext.so`, built from ext/appsignal_ext) is looked up in
# $APPSIGNAL_EXT_DIR, else in ../build/ext (where run.sh builds it).
require "json"

ext_dir = ENV.fetch("APPSIGNAL_EXT_DIR") { File.expand_path("../build/ext", __dir__) }
$LOAD_PATH.unshift(ext_dir) unless $LOAD_PATH.include?(ext_dir)
require "appsignal_ext"

module AppsignalExample
  # Configuration keys (without the `_APPSIGNAL_` prefix) → value; see the README of the library.
  DEFAULT_CONFIG = {
    "ACTIVE" => "true",
    "ENABLE_HOST_METRICS" => "false",
  }.freeze

  class << self
    # Writes `config` as `_APPSIGNAL_<KEY>` variables into ENV (keys may be given as `:push_api_key`
    # or `"PUSH_API_KEY"`), then starts the agent in this process. Returns within milliseconds; a
    # problem disables the agent (see `diagnose`), it never raises into the app.
    #
    # Call it once per process tree is enough: before forking (Unicorn master, preload) or after
    # (Puma `on_worker_boot`). A child forked from a started process closes the inherited lock and
    # socket descriptors and starts afresh as a client on its first call into the library. A child
    # forked from a process that has *stopped* the agent has a stopped agent: it must call `start`.
    def start(config = {})
      DEFAULT_CONFIG.merge(config.transform_keys { |k| k.to_s.upcase }).each do |key, value|
        ENV["_APPSIGNAL_#{key}"] = value.to_s
      end
      AppsignalExt.start
    end

    # Flushes what this process recorded (to the leader, or as leader to the Push API) and stops.
    # Waits at most _APPSIGNAL_STOP_TIMEOUT_MS (5 s by default); other threads keep running.
    def stop
      AppsignalExt.stop
    end

    # The agent's report as a Hash, parsed the way the gem's `appsignal diagnose` does: the gem's
    # checks under "extension" and "agent", ours under "leader_election".
    def diagnose
      JSON.parse(AppsignalExt.diagnose)
    end

    # Our part of the report: role, sender progress, lock holder, configuration, paths.
    def election
      diagnose["leader_election"]
    end

    # "leader", "client", "starting", "stopped" or "disabled".
    def role
      election["role"]
    end

    # Waits (at most `timeout` seconds) until the election is decided; returns the role.
    def await_role(timeout = 5.0)
      deadline = monotonic + timeout
      loop do
        r = role
        return r unless r == "starting"
        return r if monotonic >= deadline
        sleep 0.005
      end
    end

    # Records `action` around the block as a transaction in `namespace`, returning the block's value
    # and re-raising whatever it raises:
    #
    #   txn = start_transaction("", namespace, gc_ms)   (empty id: the library makes one)
    #   set_action(action); start_event
    #   … yield …
    #   finish_event("process_action.rack", action, "", 0)
    #   set_error(class, message, backtrace)            when the block raised
    #   finish → true when sampled (an error, ≥ 1 s, or the sample rate): add sample data then
    #   complete; free
    #
    # On complete the library records the per-action metrics itself (counter
    # transaction_count{action,namespace}, counter transaction_error_count{action,namespace} with an
    # error, distributions transaction_duration{action,namespace} and
    # event_duration{action,group,namespace}) and submits a sample when sampled.
    def monitor(action, namespace = "web")
      txn = AppsignalExt.start_transaction("", namespace, gc_ms)
      begin
        txn.set_action(action.to_s)
        txn.start_event(gc_ms)
        begin
          yield
        rescue Exception => e # rubocop:disable Lint/RescueException -- recorded, then re-raised
          txn.set_error(e.class.name.to_s, e.message.to_s, backtrace_data(e.backtrace))
          raise
        ensure
          txn.finish_event("process_action.rack", action.to_s, "", 0, gc_ms)
        end
      ensure
        if txn.finish(gc_ms)
          txn.set_sample_data("tags", tags_data(pid: Process.pid))
        end
        txn.complete
        txn.free # now, rather than whenever the GC gets to it
      end
    end

    def increment_counter(name, value = 1, tags = {})
      AppsignalExt.increment_counter(name.to_s, value.to_f, tags_data(tags))
    end

    def set_gauge(name, value, tags = {})
      AppsignalExt.set_gauge(name.to_s, value.to_f, tags_data(tags))
    end

    def add_distribution_value(name, value, tags = {})
      AppsignalExt.add_distribution_value(name.to_s, value.to_f, tags_data(tags))
    end

    private

    # A Hash of tags as an AppsignalExt::Data map (nil when empty). The handle is freed by the GC
    # through appsignal_free_data; the library copies what it keeps.
    def tags_data(tags)
      return nil if tags.nil? || tags.empty?
      tags.each_with_object(AppsignalExt::Data.map) do |(k, v), data|
        data.set_string(k.to_s, v.to_s)
      end
    end

    # An exception's backtrace (an Array of "file:line:in `method'" strings, or nil) as an
    # AppsignalExt::Data array.
    def backtrace_data(backtrace)
      (backtrace || []).each_with_object(AppsignalExt::Data.array) { |line, data| data.append_string(line.to_s) }
    end

    # The process's total GC time so far, in milliseconds (GC.stat(:time) exists since Ruby 3.1).
    def gc_ms
      GC.stat(:time)
    rescue ArgumentError
      0
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
