# A worker VM for the tests: `elixir -pa <ebin> worker.exs INDEX`, configuration from the
# environment (EXAMPLE_EXPORTER: push (default), otlp or push,otlp; EXAMPLE_PUSH_API_KEY and
# EXAMPLE_PUSH_API_ENDPOINT for push; EXAMPLE_OTLP_ENDPOINT and EXAMPLE_OTLP_HEADERS for otlp;
# EXAMPLE_WORKING_DIRECTORY, EXAMPLE_TRANSMISSION_INTERVAL_MS). It passes the configuration to the library with
# appsignal_env_put (AppsignalExample.start/1), starts, waits for the election, prints
# `ready <diagnose JSON>`, then serves commands on stdin, one per line:
#
#   record N   AppsignalExample.Workload.run(INDEX, N), then prints `recorded N`
#   diagnose   prints `diagnose <diagnose JSON>` (role, sender.idle, lock holder …)
#   stop       AppsignalExample.stop(), prints `stopped`, exits 0 (so does the end of input)
[index] = System.argv()
index = String.to_integer(index)

exporter = System.get_env("EXAMPLE_EXPORTER", "push")
exporters = exporter |> String.split(",") |> Enum.map(&String.trim/1)

# With the OTLP exporter alone no push API key is needed: none is given.
push =
  if "push" in exporters,
    do: [
      push_api_key: System.fetch_env!("EXAMPLE_PUSH_API_KEY"),
      push_api_endpoint: System.fetch_env!("EXAMPLE_PUSH_API_ENDPOINT")
    ],
    else: []

otlp =
  if "otlp" in exporters,
    do: [
      otlp_endpoint: System.fetch_env!("EXAMPLE_OTLP_ENDPOINT"),
      otlp_headers: System.get_env("EXAMPLE_OTLP_HEADERS", "")
    ],
    else: []

AppsignalExample.start(
  [
    exporter: exporter,
    working_directory_path: System.fetch_env!("EXAMPLE_WORKING_DIRECTORY"),
    transmission_interval_ms: System.get_env("EXAMPLE_TRANSMISSION_INTERVAL_MS", "500"),
    app_name: "elixir-example",
    app_env: "test",
    log_level: "debug"
  ] ++ push ++ otlp
)

AppsignalExample.await_role()
IO.puts("ready " <> AppsignalExample.Nif.diagnose())

defmodule Worker.Loop do
  def run(index) do
    case IO.gets("") do
      "record " <> n ->
        n = n |> String.trim() |> String.to_integer()
        AppsignalExample.Workload.run(index, n)
        IO.puts("recorded #{n}")
        run(index)

      "diagnose\n" ->
        IO.puts("diagnose " <> AppsignalExample.Nif.diagnose())
        run(index)

      line when line in [:eof, "stop\n"] or is_tuple(line) ->
        AppsignalExample.stop()
        IO.puts("stopped")

      other ->
        IO.puts(:stderr, "worker #{index}: unknown command #{inspect(other)}")
        run(index)
    end
  end
end

Worker.Loop.run(index)
System.halt(0)
