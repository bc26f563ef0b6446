# What the server configurations (puma.rb, unicorn.rb) call in each worker process.
#
# Configuration comes from the environment that run.sh sets:
#   EXAMPLE_EXPORTER (push, otlp or push,otlp; default push), EXAMPLE_PUSH_API_KEY and
#   EXAMPLE_PUSH_API_ENDPOINT (push), EXAMPLE_OTLP_ENDPOINT and optional EXAMPLE_OTLP_HEADERS (otlp),
#   EXAMPLE_WORKING_DIRECTORY, EXAMPLE_STATE_DIR, EXAMPLE_TRANSMISSION_INTERVAL_MS (default 500)
require "json"
require File.expand_path("../lib/appsignal_example", __dir__)

module ExampleBoot
  module_function

  def config
    exporter = ENV.fetch("EXAMPLE_EXPORTER", "push")
    exporters = exporter.split(",").map(&:strip)
    push = exporters.include?("push")
    otlp = exporters.include?("otlp")
    {
      exporter: exporter,
      # With the OTLP exporter alone no push API key is needed: none is given.
      push_api_key: push ? ENV.fetch("EXAMPLE_PUSH_API_KEY") : nil,
      push_api_endpoint: push ? ENV.fetch("EXAMPLE_PUSH_API_ENDPOINT") : nil,
      otlp_endpoint: otlp ? ENV.fetch("EXAMPLE_OTLP_ENDPOINT") : nil,
      otlp_headers: otlp ? ENV["EXAMPLE_OTLP_HEADERS"] : nil,
      working_directory_path: ENV.fetch("EXAMPLE_WORKING_DIRECTORY"),
      transmission_interval_ms: ENV.fetch("EXAMPLE_TRANSMISSION_INTERVAL_MS", "500"),
      app_name: "ruby-example",
      app_env: "example",
      enable_host_metrics: "false",
      log_level: "debug",
    }.compact
  end

  # In a worker, right after fork. With `start: true` (Puma): start the agent here. With
  # `start: false` (Unicorn): the agent was started in the master before forking, and the library
  # re-initialises this child on its first call (`role` → diagnose); only a worker forked after the
  # master stopped the agent (a replacement worker, once the master has handed the leadership to a
  # worker) inherits a stopped agent and starts it itself.
  #
  # Then waits until the election is decided and leaves a note `<server>-<pid>.json` with the role
  # in EXAMPLE_STATE_DIR (run.sh checks the roles and waits for replacement workers with it).
  def worker_started(server, index, start: true)
    inherited = !start
    if start || AppsignalExample.role == "stopped"
      AppsignalExample.start(config)
      inherited = false
    end
    role = AppsignalExample.await_role
    write_note("#{server}-#{Process.pid}", server: server, index: index, pid: Process.pid,
                                              role: role, inherited: inherited)
  end

  # In the Unicorn master, before the first fork (after preloading): start the agent once. The
  # master leads until `hand_over_when_ready` stops it.
  def master_started(server)
    AppsignalExample.start(config)
    role = AppsignalExample.await_role
    write_note("#{server}-master", pid: Process.pid, role: role, handed_over: false)
  end

  # In the Unicorn master: a thread that waits until `count` workers have noted that they are
  # clients (connected to the master, the leader), then stops the agent in the master. A leader
  # that stops with connected clients hands the leadership over to one of them, so from then on a
  # worker leads, and killing "the leader worker" means something. Without EXAMPLE_STATE_DIR the
  # master simply stays the leader.
  def hand_over_when_ready(server, count, timeout = 60)
    dir = ENV["EXAMPLE_STATE_DIR"] or return
    Thread.new do
      deadline = monotonic + timeout
      until clients_noted(dir, server) >= count
        Thread.exit if monotonic > deadline # stays the leader; run.sh reports it
        sleep 0.02
      end
      AppsignalExample.stop
      write_note("#{server}-master", pid: Process.pid, role: AppsignalExample.role, handed_over: true)
    rescue StandardError => e
      warn "hand over: #{e.class}: #{e.message}"
    end
  end

  def clients_noted(dir, server)
    Dir[File.join(dir, "#{server}-[0-9]*.json")].count do |f|
      JSON.parse(File.read(f))["role"] == "client"
    rescue JSON::ParserError, SystemCallError
      false
    end
  end

  def write_note(name, note)
    dir = ENV["EXAMPLE_STATE_DIR"] or return
    path = File.join(dir, "#{name}.json")
    File.write("#{path}.tmp", JSON.generate(note))
    File.rename("#{path}.tmp", path) # readers never see half a note
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # In a worker, when it exits gracefully: hand what it recorded to the leader (or push it, as
  # leader) and stop. Another worker takes over when the leader stops.
  def worker_stopping
    AppsignalExample.stop
  end
end
