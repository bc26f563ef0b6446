defmodule AppsignalExample.TestWorker do
  @moduledoc """
  A separate BEAM (a separate OS process) running `test/support/worker.exs`, driven over its stdin
  and stdout lines through a port owned by the calling process (the worker sees the end of its
  input, stops and exits when that process dies): `record N` → `recorded N`, `stop` → `stopped`, then it exits.
  At start it prints `ready <diagnose JSON>` once its election is decided.
  """
  alias AppsignalExample.JSON

  defstruct [:port, :index, :os_pid, :diagnose]

  @doc "Starts the VM (returns at once; see `await_ready!/2`)."
  def open!(index, env) do
    elixir = System.find_executable("elixir") || raise "elixir not found on PATH"
    script = Path.expand("worker.exs", __DIR__)
    ebin = Mix.Project.compile_path()

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 1_000_000},
        args: ["-pa", ebin, script, Integer.to_string(index)],
        env: Enum.map(env, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    %__MODULE__{port: port, index: index, os_pid: os_pid}
  end

  @doc "Waits for `ready <diagnose JSON>`, i.e. until the worker's election is decided."
  def await_ready!(worker, timeout_ms \\ 60_000) do
    "ready " <> json = expect!(worker, "ready ", timeout_ms)
    %{worker | diagnose: JSON.decode!(json)}
  end

  def role(%__MODULE__{diagnose: d}), do: d["leader_election"]["role"]
  def pid(%__MODULE__{diagnose: d}), do: d["leader_election"]["process"]["pid"]

  def send!(%__MODULE__{port: port}, command) do
    Port.command(port, command <> "\n")
    :ok
  end

  @doc "Waits for the next line starting with `prefix`; other lines are echoed (the worker's stderr)."
  def expect!(%__MODULE__{port: port, index: index}, prefix, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    await_line(port, index, prefix, deadline, timeout_ms)
  end

  defp await_line(port, index, prefix, deadline, timeout_ms) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {:eol, line}}} ->
        if String.starts_with?(line, prefix) do
          line
        else
          IO.puts("  [worker #{index}] #{line}")
          await_line(port, index, prefix, deadline, timeout_ms)
        end

      {^port, {:data, {:noeol, _}}} ->
        await_line(port, index, prefix, deadline, timeout_ms)

      {^port, {:exit_status, status}} ->
        raise "worker #{index} exited with status #{status} while waiting for #{inspect(prefix)}"
    after
      left -> raise "worker #{index} printed no #{inspect(prefix)} line within #{timeout_ms} ms"
    end
  end

  @doc "Waits for the worker to exit; returns its exit status."
  def await_exit!(%__MODULE__{port: port, index: index}, timeout_ms) do
    receive do
      {^port, {:exit_status, status}} -> status
    after
      timeout_ms -> raise "worker #{index} did not exit within #{timeout_ms} ms"
    end
  end

  @doc "`stop`, then waits for `stopped` and the exit; returns the exit status."
  def stop!(worker, timeout_ms \\ 30_000) do
    send!(worker, "stop")
    expect!(worker, "stopped", timeout_ms)
    await_exit!(worker, timeout_ms)
  end
end
