defmodule AppsignalExample.TestReceiver do
  @moduledoc """
  The reference Push API receiver (the Rust `receiver` example) as an OS process, and its
  `GET /summary` through `:httpc`; `summary/1`, `await_totals/3` and `stop/1` also take an
  `AppsignalExample.TestOtlpReceiver`.

  The binary: `$RECEIVER_BIN`, else `$CARGO_TARGET_DIR/release/examples/receiver` (with
  `CARGO_TARGET_DIR` defaulting to `<repository>/target`).
  """
  alias AppsignalExample.JSON

  defstruct [:port, :os_pid, :url]

  def binary do
    case System.get_env("RECEIVER_BIN") do
      bin when is_binary(bin) and bin != "" ->
        bin

      _ ->
        root = Path.expand("../..", File.cwd!())

        target =
          case System.get_env("CARGO_TARGET_DIR") do
            dir when is_binary(dir) and dir != "" -> Path.expand(dir)
            _ -> Path.join(root, "target")
          end

        Path.join([target, "release", "examples", "receiver"])
    end
  end

  def start!(key, dir) do
    bin = binary()

    File.regular?(bin) ||
      raise "no receiver at #{bin}: build it (cargo build --release -p appsignal-testkit --example receiver) or set RECEIVER_BIN"

    port =
      Port.open({:spawn_executable, bin}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["--listen", "127.0.0.1:0", "--key", key, "--dir", dir]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    url = await_url(port, System.monotonic_time(:millisecond) + 20_000)
    %__MODULE__{port: port, os_pid: os_pid, url: url}
  end

  defp await_url(port, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {:eol, line}}} ->
        case Regex.run(~r{http://127\.0\.0\.1:\d+}, line) do
          [url] -> url
          nil -> await_url(port, deadline)
        end

      {^port, {:exit_status, status}} ->
        raise "the receiver exited with status #{status}"
    after
      left -> raise "the receiver printed no URL within 20 s"
    end
  end

  def stop(%AppsignalExample.TestOtlpReceiver{} = r), do: AppsignalExample.TestOtlpReceiver.stop(r)

  def stop(%__MODULE__{port: port, os_pid: os_pid}) do
    System.cmd("kill", ["-TERM", Integer.to_string(os_pid)], stderr_to_stdout: true)

    if Port.info(port) do
      Port.close(port)
    end

    :ok
  end

  @doc "The summary; of the OTLP receiver, in this receiver's terms (see `AppsignalExample.TestOtlpReceiver`)."
  def summary(%AppsignalExample.TestOtlpReceiver{} = r),
    do: AppsignalExample.TestOtlpReceiver.summary(r)

  def summary(%__MODULE__{url: url}) do
    {:ok, {{_, 200, _}, _headers, body}} =
      :httpc.request(:get, {String.to_charlist(url <> "/summary"), []}, [timeout: 5_000],
        body_format: :binary
      )

    JSON.decode!(body)
  end

  @doc """
  Polls the summary until it equals `expected` (see `AppsignalExample.Workload`) or `timeout_ms`
  passes. Returns `{all_equal?, rows, summary}`.
  """
  def await_totals(receiver, expected, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(receiver, expected, deadline)
  end

  defp poll(receiver, expected, deadline) do
    summary = summary(receiver)
    rows = compare(expected, summary)
    ok = Enum.all?(rows, fn {_, _, _, equal} -> equal end)

    if ok or System.monotonic_time(:millisecond) >= deadline do
      {ok, rows, summary}
    else
      Process.sleep(50)
      poll(receiver, expected, deadline)
    end
  end

  @doc "Rows `{series, sent, received, equal?}`; series the receiver has but nobody sent are rows too."
  def compare(expected, summary) do
    counters =
      for {k, v} <- Enum.sort(expected.counters) do
        got = get_in(summary, ["counters", k])
        {"counter #{k}", "#{v}", fmt(got), got == v or got == v * 1.0}
      end

    distributions =
      for {k, %{count: count, sum: sum}} <- Enum.sort(expected.distributions) do
        got = get_in(summary, ["distributions", k]) || %{}

        sum_ok =
          is_nil(sum) or (is_number(got["sum"]) and abs(got["sum"] - sum) <= abs(sum) * 1.0e-9)

        sent = "count #{count}" <> if(sum, do: " sum #{sum}", else: "")
        received = "count #{fmt(got["count"])}" <> if(sum, do: " sum #{fmt(got["sum"])}", else: "")
        {"distribution #{k}", sent, received, got["count"] == count and sum_ok}
      end

    gauges =
      for {k, v} <- Enum.sort(expected.gauges) do
        got = get_in(summary, ["gauges", k])
        {"gauge #{k}", "#{v}", fmt(got), got == v or got == v * 1.0}
      end

    unexpected =
      for {kind, sent} <- [
            {"counters", expected.counters},
            {"distributions", expected.distributions},
            {"gauges", expected.gauges}
          ],
          k <- Map.keys(summary[kind] || %{}) -- Map.keys(sent) do
        {"#{String.trim_trailing(kind, "s")} #{k} (not sent)", "-", inspect(summary[kind][k]),
         false}
      end

    samples =
      case Map.get(expected, :samples) do
        nil ->
          []

        n ->
          [
            # A window keeps at most 200 samples; the rest are counted as dropped.
            {"samples kept + dropped (spans with an error)", "#{n}",
             fmt((summary["samples"] || 0) + (summary["dropped_samples"] || 0)),
             (summary["samples"] || 0) + (summary["dropped_samples"] || 0) == n}
          ]
      end

    # OTLP: every sampled span here has an error, so every root span carries the exception event.
    otlp =
      case summary["otlp"] do
        %{"roots_without_exception" => n} ->
          [{"root spans without an exception event", "0", fmt(n), n == 0}]

        _ ->
          []
      end

    counters ++ distributions ++ gauges ++ samples ++ otlp ++ unexpected
  end

  def format_rows(rows) do
    w = rows |> Enum.map(fn {s, _, _, _} -> String.length(s) end) |> Enum.max(fn -> 6 end)

    sw =
      rows |> Enum.map(fn {_, s, _, _} -> String.length(s) end) |> Enum.max(fn -> 4 end) |> max(4)

    rw =
      rows |> Enum.map(fn {_, _, r, _} -> String.length(r) end) |> Enum.max(fn -> 8 end) |> max(8)

    header =
      String.pad_trailing("series", w) <>
        "  " <>
        String.pad_leading("sent", sw) <>
        "  " <>
        String.pad_leading("received", rw)

    lines =
      for {s, sent, got, ok} <- rows do
        String.pad_trailing(s, w) <>
          "  " <>
          String.pad_leading(sent, sw) <>
          "  " <>
          String.pad_leading(got, rw) <> "  " <> if(ok, do: "ok", else: "DIFFERENT")
      end

    Enum.join([header | lines], "\n")
  end

  defp fmt(nil), do: "-"
  defp fmt(f) when is_float(f) and f == trunc(f), do: Integer.to_string(trunc(f))
  defp fmt(x), do: to_string(x)
end
