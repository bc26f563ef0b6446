defmodule AppsignalExample.Workload do
  @moduledoc """
  What a worker VM records for `record n` (see worker.exs), and what the receiver must then have:
  both from the same definitions, the expectation by arithmetic rather than by recording.

  For j in 1..n, worker i:
    * `instrument("job/\#{rem(j, 3)}", …)` (a root span in namespace "background"; the library
      records transaction_count / transaction_error_count / transaction_duration{action,namespace}
      and a sample per error), raising for every tenth j
    * counter `elixir_jobs{worker=i}` += 1
    * distribution `job_size{queue=q\#{rem(j, 2)}}` += j
  then gauge `last_batch{worker=i}` = n.
  """

  def run(index, n) do
    for j <- 1..n//1 do
      try do
        AppsignalExample.instrument(action(j), fn ->
          if rem(j, 10) == 0, do: raise("boom (on purpose)"), else: :ok
        end)
      rescue
        RuntimeError -> :ok
      end

      AppsignalExample.increment_counter("elixir_jobs", 1, %{worker: index})
      AppsignalExample.add_distribution_value("job_size", j, %{queue: queue(j)})
    end

    AppsignalExample.set_gauge("last_batch", n, %{worker: index})
  end

  defp action(j), do: "job/#{rem(j, 3)}"
  defp queue(j), do: "q#{rem(j, 2)}"

  @doc "An empty expectation (samples: the root spans with an error, each sampled)."
  def empty, do: %{counters: %{}, distributions: %{}, gauges: %{}, samples: 0}

  @doc "Adds worker `index`'s `record n` to `expected` (series named as the receiver names them)."
  def expect(expected, index, n) do
    Enum.reduce(1..n//1, expected, fn j, acc ->
      acc
      |> add_counter("transaction_count{action=#{action(j)},namespace=background}", 1)
      |> add_distribution("transaction_duration{action=#{action(j)},namespace=background}", nil)
      |> then(fn acc ->
        if rem(j, 10) == 0,
          do:
            acc
            |> add_counter("transaction_error_count{action=#{action(j)},namespace=background}", 1)
            |> Map.update(:samples, 1, &(&1 + 1)),
          else: acc
      end)
      |> add_counter("elixir_jobs{worker=#{index}}", 1)
      |> add_distribution("job_size{queue=#{queue(j)}}", j)
    end)
    |> put_in([:gauges, "last_batch{worker=#{index}}"], n)
  end

  defp add_counter(e, key, v), do: update_in(e, [:counters, key], &((&1 || 0) + v))

  # A nil value: only the count is known (durations).
  defp add_distribution(e, key, v) do
    update_in(e, [:distributions, key], fn
      nil -> %{count: 1, sum: v}
      %{count: c, sum: s} -> %{count: c + 1, sum: s && v && s + v}
    end)
  end
end
