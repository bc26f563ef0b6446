defmodule AppsignalExample.TestOtlpReceiver do
  @moduledoc """
  The Python OTLP/HTTP receiver (`examples/otlp_receiver.py`, which parses every request with the
  official `opentelemetry-proto` classes) as an OS process, and its `GET /summary` read in the
  reference receiver's terms, so that `AppsignalExample.TestReceiver.await_totals/3` compares it the
  same way.

  The Python: `$APPSIGNAL_OTLP_PYTHON` (`run.sh otlp` finds it as the Rust tests do and sets it).
  """
  alias AppsignalExample.JSON

  defstruct [:port, :os_pid, :url]

  def script, do: Path.expand("../../../otlp_receiver.py", __DIR__)

  def python do
    case System.get_env("APPSIGNAL_OTLP_PYTHON") do
      p when is_binary(p) and p != "" -> System.find_executable(p) || p
      _ -> raise "APPSIGNAL_OTLP_PYTHON is not set: run the OTLP tests with `run.sh otlp`"
    end
  end

  def start! do
    port =
      Port.open({:spawn_executable, python()}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: [script(), "--port", "0"]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    url = await_url(port, System.monotonic_time(:millisecond) + 20_000)
    %__MODULE__{port: port, os_pid: os_pid, url: url}
  end

  # The first line is {"listening": "http://127.0.0.1:PORT"}.
  defp await_url(port, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {:eol, line}}} ->
        case JSON.decode(line) do
          {:ok, %{"listening" => url}} -> url
          _ -> await_url(port, deadline)
        end

      {^port, {:exit_status, status}} ->
        raise "the OTLP receiver exited with status #{status}"
    after
      left -> raise "the OTLP receiver printed no address within 20 s"
    end
  end

  def stop(%__MODULE__{port: port, os_pid: os_pid}) do
    System.cmd("kill", ["-TERM", Integer.to_string(os_pid)], stderr_to_stdout: true)
    if Port.info(port), do: Port.close(port)
    :ok
  end

  def raw_summary(%__MODULE__{url: url}) do
    {:ok, {{_, 200, _}, _headers, body}} =
      :httpc.request(:get, {String.to_charlist(url <> "/summary"), []}, [timeout: 5_000],
        body_format: :binary
      )

    JSON.decode!(body)
  end

  @doc """
  The summary in the reference receiver's terms: counters, gauges and distributions as they are
  (keyed `name{k=v,...}` the same way), the agent's own `appsignal.agent.dropped_updates` /
  `dropped_samples` counters as `dropped_updates` / `dropped_samples` (any other `appsignal.agent.*`
  counter stays a series nobody sent: a difference), `samples` = root spans (a span sample is one),
  `payloads` = export requests. `"otlp"` holds what only this receiver tells: requests per signal
  and the root spans without an `exception` event.
  """
  def summary(receiver) do
    s = raw_summary(receiver)
    {dropped_updates, counters} = Map.pop(s["counters"] || %{}, "appsignal.agent.dropped_updates{}")
    {dropped_samples, counters} = Map.pop(counters, "appsignal.agent.dropped_samples{}")
    roots = Enum.filter(s["spans"] || [], &(&1["parent_span_id"] in [nil, ""]))

    without_exception =
      Enum.count(roots, fn span -> not Enum.any?(span["events"], &(&1["name"] == "exception")) end)

    %{
      "counters" => counters,
      "gauges" => s["gauges"] || %{},
      "distributions" => s["distributions"] || %{},
      "samples" => length(roots),
      "dropped_samples" => trunc(dropped_samples || 0),
      "dropped_updates" => trunc(dropped_updates || 0),
      "payloads" => s["requests"] |> Map.values() |> Enum.sum(),
      "duplicates" => s["duplicates"],
      # No key check in OTLP here.
      "unauthorized" => 0,
      "bad_requests" => s["bad_requests"],
      "otlp" => %{
        "requests" => s["requests"],
        "roots_without_exception" => without_exception,
        "resources" => s["resources"]
      }
    }
  end
end
