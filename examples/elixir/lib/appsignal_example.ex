defmodule AppsignalExample do
  @moduledoc """
  The Elixir side of the example integration: configuration, `instrument/2`, metric helpers.

      AppsignalExample.start(push_api_key: "…", push_api_endpoint: "http://127.0.0.1:8099",
                             working_directory_path: "/tmp/my-app", app_name: "my-app")
      AppsignalExample.instrument("checkout", fn -> … end)
      AppsignalExample.increment_counter("jobs", 1, %{"queue" => "mail"})
      AppsignalExample.stop()

  Every BEAM (every OS process) that records data calls `start/1`; the processes that share a
  working directory elect one leader among themselves, which pushes for all of them.
  """
  alias AppsignalExample.{JSON, Nif}

  @defaults %{"ACTIVE" => "true", "ENABLE_HOST_METRICS" => "false"}
  @namespace "background"
  # The process dictionary key of the innermost open span of this Erlang process.
  @current_span {__MODULE__, :current_span}

  @type tags :: %{optional(atom | String.t()) => String.Chars.t()}

  @doc """
  Writes `config` (keys like `:push_api_key` or `"PUSH_API_KEY"`) as `_APPSIGNAL_<KEY>` into the
  library's own environment table with `appsignal_env_put` — the BEAM cannot set real environment
  variables reliably for a native library — and starts the agent in this OS process. Returns within
  milliseconds; a problem disables the agent (see `diagnose/0`), it never raises.
  """
  @spec start(keyword | map) :: :ok
  def start(config \\ []) do
    config
    |> Map.new(fn {k, v} -> {k |> to_string() |> String.upcase(), to_string(v)} end)
    |> then(&Map.merge(@defaults, &1))
    |> Enum.each(fn {k, v} -> Nif.env_put("_APPSIGNAL_" <> k, v) end)

    Nif.start()
  end

  @doc "Flushes what this process recorded (to the leader, or as leader to the Push API) and stops."
  @spec stop() :: :ok
  def stop, do: Nif.stop()

  @doc "The agent's report as a map: the gem-shaped `extension`/`agent` checks and our `leader_election` part (role, lock holder …)."
  @spec diagnose() :: map
  def diagnose, do: JSON.decode!(Nif.diagnose())

  @doc ~s{"leader", "client", "starting", "stopped" or "disabled".}
  @spec role() :: String.t()
  def role, do: diagnose()["leader_election"]["role"]

  @doc "Waits (at most `timeout_ms`) until the election is decided; returns the role."
  @spec await_role(non_neg_integer) :: String.t()
  def await_role(timeout_ms \\ 5_000) do
    await_role_until(System.monotonic_time(:millisecond) + timeout_ms)
  end

  defp await_role_until(deadline) do
    case role() do
      "starting" ->
        if System.monotonic_time(:millisecond) < deadline do
          Process.sleep(5)
          await_role_until(deadline)
        else
          "starting"
        end

      other ->
        other
    end
  end

  @doc """
  Runs `fun` as the action `name`, returning its result and re-raising whatever it raises, throws
  or exits with.

  Outside another `instrument`, this is a root span in namespace `"background"` named `name`:
  `create_root_span`, `set_span_name`, `add_span_error(class, message, backtrace)` when `fun`
  fails, `close_span`. On close the library records the per-action metrics itself (counter
  `transaction_count{action,namespace}`, counter `transaction_error_count{action,namespace}` with
  an error, distribution `transaction_duration{action,namespace}`) and a sample when it has an
  error. Inside another `instrument` (same Erlang process) it is a child span of the current one,
  which becomes an event of the root's sample. The span handle is a NIF resource, freed by the GC.
  """
  @spec instrument(String.t(), (() -> result)) :: result when result: var
  def instrument(name, fun) when is_function(fun, 0) do
    parent = Process.get(@current_span)

    span =
      case parent do
        nil -> Nif.create_root_span(@namespace)
        parent -> Nif.create_child_span(parent)
      end

    Nif.set_span_name(span, to_string(name))
    Process.put(@current_span, span)

    try do
      fun.()
    catch
      kind, reason ->
        {class, message} = error_info(kind, reason, __STACKTRACE__)
        backtrace = Enum.map(__STACKTRACE__, &Exception.format_stacktrace_entry/1)
        Nif.add_span_error(span, class, message, backtrace)
        :erlang.raise(kind, reason, __STACKTRACE__)
    after
      Nif.close_span(span)

      case parent do
        nil -> Process.delete(@current_span)
        parent -> Process.put(@current_span, parent)
      end
    end
  end

  # The error's class and message: the exception module for errors (e.g. "RuntimeError"), the kind
  # for throws and exits.
  defp error_info(:error, reason, stacktrace) do
    e = Exception.normalize(:error, reason, stacktrace)
    {inspect(e.__struct__), Exception.message(e)}
  end

  defp error_info(kind, reason, _stacktrace), do: {Atom.to_string(kind), inspect(reason)}

  @doc "Adds `value` to a counter (summed per window)."
  @spec increment_counter(String.t(), number, tags) :: :ok
  def increment_counter(name, value \\ 1, tags \\ %{}),
    do: Nif.increment_counter(to_string(name), value, tags(tags))

  @doc "Sets a gauge (the last value in a window wins)."
  @spec set_gauge(String.t(), number, tags) :: :ok
  def set_gauge(name, value, tags \\ %{}), do: Nif.set_gauge(to_string(name), value, tags(tags))

  @doc "Adds a value to a distribution (count, sum, min, max, quantiles per window)."
  @spec add_distribution_value(String.t(), number, tags) :: :ok
  def add_distribution_value(name, value, tags \\ %{}),
    do: Nif.add_distribution_value(to_string(name), value, tags(tags))

  defp tags(tags), do: Map.new(tags, fn {k, v} -> {to_string(k), to_string(v)} end)
end
