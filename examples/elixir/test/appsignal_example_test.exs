defmodule AppsignalExampleTest do
  # Real OS processes, a real flock, a real Unix socket and real HTTP on 127.0.0.1: serial.
  use ExUnit.Case, async: false

  alias AppsignalExample.{JSON, Nif, TestOtlpReceiver, TestReceiver, TestWorker, Workload}

  @workers String.to_integer(System.get_env("WORKERS", "3"))
  @records String.to_integer(System.get_env("RECORDS", "500"))

  describe "in this VM, without starting the agent" do
    test "the environment table round-trips binaries, including non-ASCII and NUL" do
      Nif.env_clear()
      assert Nif.env_get("_APPSIGNAL_APP_NAME") == nil
      assert Nif.env_put("_APPSIGNAL_APP_NAME", "caf\u00e9 \0 app") == :ok
      assert Nif.env_get("_APPSIGNAL_APP_NAME") == "caf\u00e9 \0 app"
      Nif.env_delete("_APPSIGNAL_APP_NAME")
      assert Nif.env_get("_APPSIGNAL_APP_NAME") == nil
    end

    test "diagnose is JSON and says stopped; metric calls before start are no-ops" do
      assert %{
               "leader_election" => %{"role" => "stopped", "library_version" => _},
               "agent" => %{"boot" => %{"started" => %{"result" => false}}}
             } = AppsignalExample.diagnose()

      assert AppsignalExample.increment_counter("c", 1, %{a: 1}) == :ok
      assert AppsignalExample.set_gauge("g", 2.5) == :ok
      assert AppsignalExample.add_distribution_value("d", 3, %{"k" => "v"}) == :ok
    end

    test "bad arguments are badarg, not crashes" do
      assert_raise ArgumentError, fn -> Nif.increment_counter("c", "one", %{}) end
      assert_raise ArgumentError, fn -> Nif.increment_counter("c", 1, %{"k" => 1}) end
      assert_raise ArgumentError, fn -> Nif.increment_counter("c", 1, [:not_a_map]) end
      assert_raise ArgumentError, fn -> Nif.env_put(:atom, "v") end
    end

    test "instrument returns the result and re-raises" do
      assert AppsignalExample.instrument("x", fn -> 42 end) == 42

      assert_raise RuntimeError, "boom", fn ->
        AppsignalExample.instrument("x", fn -> raise "boom" end)
      end

      assert catch_throw(AppsignalExample.instrument("x", fn -> throw(:t) end)) == :t
      assert catch_exit(AppsignalExample.instrument("x", fn -> exit(:e) end)) == :e
      # Nested: a child span of the current one; the parent is current again afterwards.
      assert AppsignalExample.instrument("outer", fn ->
               AppsignalExample.instrument("inner", fn -> :inner end)
             end) == :inner

      assert Process.get({AppsignalExample, :current_span}) == nil
    end

    test "span resources: names, errors with backtraces, close, badarg" do
      root = Nif.create_root_span("background")
      assert Nif.set_span_name(root, "job/x") == :ok
      child = Nif.create_child_span(root)
      assert Nif.span_id(child) =~ ~r/^[0-9a-f]{8}$/
      assert Nif.add_span_error(root, "RuntimeError", "boom", ["a.ex:1", "b.ex:2"]) == :ok
      assert Nif.close_span(child) == :ok

      json = JSON.decode!(Nif.span_to_json(root))
      assert json["name"] == "job/x"
      assert json["namespace"] == "background"
      assert json["closed"] == false
      assert json["error"]["name"] == "RuntimeError"
      assert JSON.decode!(json["error"]["backtrace_json"]) == ["a.ex:1", "b.ex:2"]
      # A closed span's JSON is empty: the package sees it closed.
      assert Nif.close_span(root) == :ok
      assert Nif.span_to_json(root) == nil

      assert_raise ArgumentError, fn -> Nif.close_span(:not_a_span) end
      assert_raise ArgumentError, fn -> Nif.add_span_error(root, "E", "m", [:not_a_binary]) end
      assert_raise ArgumentError, fn -> Nif.create_child_span(make_ref()) end
    end

    test "the JSON decoder" do
      assert JSON.decode!(
               ~s({"a":[1,-2.5,1e3,true,false,null],"b":"\\u00e9\\n\\"x\\" \\ud83d\\ude00"})
             ) ==
               %{"a" => [1, -2.5, 1000.0, true, false, nil], "b" => "\u00e9\n\"x\" \u{1F600}"}

      assert {:error, _} = JSON.decode("{\"a\":}")
      assert {:error, _} = JSON.decode("[1,2")
    end
  end

  describe "#{@workers} BEAM processes sharing one working directory" do
    setup do
      key = "elixir-example-key-#{System.unique_integer([:positive])}"
      tmp = tmp_dir!()
      receiver = TestReceiver.start!(key, Path.join(tmp, "received"))
      on_exit(fn -> cleanup(receiver, tmp) end)

      env = [
        {"EXAMPLE_PUSH_API_KEY", key},
        {"EXAMPLE_PUSH_API_ENDPOINT", receiver.url},
        {"EXAMPLE_WORKING_DIRECTORY", Path.join(tmp, "wd")},
        {"EXAMPLE_TRANSMISSION_INTERVAL_MS", "500"}
      ]

      %{
        receiver: receiver,
        env: env,
        workdir: Path.join(tmp, "wd"),
        secret: key,
        push_key: "present"
      }
    end

    test "elect exactly one leader; clients stop first, then the leader; totals equal", ctx do
      workers = start_workers(ctx)
      expected = record_two_windows(workers, ctx)

      {leader, clients} = split_leader(workers)

      for w <- clients ++ [leader] do
        assert TestWorker.stop!(w) == 0, "worker #{w.index} exit status"
      end

      assert_totals(ctx, expected)
    end

    test "everyone stopping at once loses nothing (clients take over from the stopping leader)",
         ctx do
      workers = start_workers(ctx)
      expected = record_two_windows(workers, ctx)

      Enum.each(workers, &TestWorker.send!(&1, "stop"))

      for w <- workers do
        TestWorker.expect!(w, "stopped", 30_000)
        assert TestWorker.await_exit!(w, 30_000) == 0, "worker #{w.index} exit status"
      end

      assert_totals(ctx, expected)
    end

    test "SIGKILL of the leader VM between two rounds loses nothing (journal replay, resends)",
         ctx do
      leader_sigkill_between_rounds(ctx)
    end
  end

  # `run.sh otlp` (mix test --only otlp): the OTLP exporter alone, no push API key, against the
  # Python OTLP receiver; the same exact totals from what it parsed with the official classes.
  describe "#{@workers} BEAM processes exporting OTLP (_APPSIGNAL_EXPORTER=otlp, no push key)" do
    @describetag :otlp

    setup do
      # The value of an OTLP header: sent with every export, never to be seen in the log.
      secret = "elixir-example-otlp-secret-#{System.unique_integer([:positive])}"
      tmp = tmp_dir!()
      receiver = TestOtlpReceiver.start!()
      on_exit(fn -> cleanup(receiver, tmp) end)
      IO.puts("\nOTLP receiver #{receiver.url} (#{TestOtlpReceiver.python()})")

      env = [
        {"EXAMPLE_EXPORTER", "otlp"},
        {"EXAMPLE_OTLP_ENDPOINT", receiver.url},
        {"EXAMPLE_OTLP_HEADERS", "x-example-api-key=#{secret}"},
        {"EXAMPLE_WORKING_DIRECTORY", Path.join(tmp, "wd")},
        {"EXAMPLE_TRANSMISSION_INTERVAL_MS", "500"}
      ]

      %{
        receiver: receiver,
        env: env,
        workdir: Path.join(tmp, "wd"),
        secret: secret,
        push_key: "absent"
      }
    end

    test "SIGKILL of the leader VM between two rounds loses nothing; every export is OTLP", ctx do
      leader_sigkill_between_rounds(ctx)

      log = File.read!(Path.join(ctx.workdir, "appsignal.log"))
      assert log =~ ~r/exporting every .* to OTLP at/
      refute log =~ "sent push payload"

      # One resource: the app, without a push key attribute (none was given).
      assert [resource] = TestOtlpReceiver.raw_summary(ctx.receiver)["resources"]
      assert resource["service.name"] == "elixir-example"
      assert resource["appsignal.config.environment"] == "test"
      refute Map.has_key?(resource, "appsignal.config.push_api_key")
    end
  end

  # ---- helpers ------------------------------------------------------------------------------------

  # Unique across runs too (unique_integer alone repeats in the next VM, and a directory kept by
  # KEEP_TMP=1 would hand its journal to the next run).
  defp tmp_dir! do
    tmp =
      Path.join(
        System.tmp_dir!(),
        "appsignal-elixir-#{System.pid()}-#{System.unique_integer([:positive])}"
      )

    File.rm_rf!(tmp)
    File.mkdir_p!(tmp)
    tmp
  end

  defp cleanup(receiver, tmp) do
    TestReceiver.stop(receiver)
    if System.get_env("KEEP_TMP") != "1", do: File.rm_rf(tmp)
  end

  defp leader_sigkill_between_rounds(ctx) do
    workers = start_workers(ctx)
    expected = record_round(workers, Workload.empty())
    {leader, survivors} = split_leader(workers)
    victim = TestWorker.pid(leader)

    # No job is running (the round is over); what the leader recorded itself must also have left
    # its unflushed pre-aggregate (flushed every 100 ms): wait until its sender is idle.
    polls = await_idle!(leader, System.monotonic_time(:millisecond) + 10_000, 1)
    killed = System.monotonic_time(:millisecond)
    {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(victim)])
    assert TestWorker.await_exit!(leader, 10_000) == 128 + 9
    new_leader = await_new_leader!(ctx.workdir, victim, killed + 10_000)

    IO.puts(
      "SIGKILL leader os pid #{victim} (idle after #{polls} diagnose poll(s)); new leader os pid " <>
        "#{new_leader} after #{System.monotonic_time(:millisecond) - killed} ms"
    )

    assert new_leader in Enum.map(survivors, &TestWorker.pid/1)
    # The second round in a later window than the first (a window keeps at most 200 samples, and
    # each round has 150 errors).
    await_payload(ctx.receiver, System.monotonic_time(:millisecond) + 20_000)
    expected = record_round(survivors, expected)

    # The new leader stops last (see the README on stopping everyone at once).
    {[last], others} = Enum.split_with(survivors, &(TestWorker.pid(&1) == new_leader))

    for w <- others ++ [last] do
      assert TestWorker.stop!(w) == 0, "worker #{w.index} exit status"
    end

    assert_totals(ctx, expected)

    replays =
      File.read!(Path.join(ctx.workdir, "appsignal.log"))
      |> String.split("\n")
      |> Enum.filter(&String.contains?(&1, "replayed"))

    IO.puts("journal replays after the kill: #{length(replays)}")
    for line <- replays, do: IO.puts("  " <> line)
  end

  defp await_idle!(worker, deadline, polls) do
    TestWorker.send!(worker, "diagnose")
    "diagnose " <> json = TestWorker.expect!(worker, "diagnose ", 10_000)
    d = JSON.decode!(json)["leader_election"]
    assert d["role"] == "leader"

    cond do
      d["sender"]["idle"] == true ->
        polls

      System.monotonic_time(:millisecond) > deadline ->
        flunk("the leader was not idle within 10 s: #{inspect(d["sender"])}")

      true ->
        Process.sleep(10)
        await_idle!(worker, deadline, polls + 1)
    end
  end

  # The lock file `<workdir>/agent.lock` holds `pid;version;started_at` of the leader.
  defp await_new_leader!(workdir, old, deadline) do
    holder =
      case File.read(Path.join(workdir, "agent.lock")) do
        {:ok, text} -> text |> String.split(";") |> hd() |> Integer.parse()
        _ -> :error
      end

    case holder do
      {pid, _} when pid != old and pid > 0 ->
        pid

      _ ->
        if System.monotonic_time(:millisecond) > deadline, do: flunk("no new leader within 10 s")
        Process.sleep(5)
        await_new_leader!(workdir, old, deadline)
    end
  end

  # Starts the VMs together (each takes a moment to boot), so that they elect among themselves.
  defp start_workers(ctx) do
    started = System.monotonic_time(:millisecond)

    workers =
      0..(@workers - 1)
      |> Enum.map(&TestWorker.open!(&1, ctx.env))
      |> Enum.map(&TestWorker.await_ready!/1)

    IO.puts(
      "\n== #{ctx.test}\n#{length(workers)} BEAM processes up in " <>
        "#{System.monotonic_time(:millisecond) - started} ms:"
    )

    for w <- workers do
      IO.puts("  worker #{w.index}: os pid #{TestWorker.pid(w)}, #{TestWorker.role(w)}")
    end

    roles = Enum.map(workers, &TestWorker.role/1)
    assert Enum.count(roles, &(&1 == "leader")) == 1, "roles: #{inspect(roles)}"
    assert Enum.count(roles, &(&1 == "client")) == @workers - 1, "roles: #{inspect(roles)}"

    {leader, _} = split_leader(workers)

    for w <- workers do
      election = w.diagnose["leader_election"]
      assert election["lock"]["holder_pid"] == TestWorker.pid(leader)
      assert election["config"]["push_api_key"] == ctx.push_key
      assert election["config"]["valid"] == true
      assert election["config"]["app_name"] == "elixir-example"
      assert election["working_directory"]["path"] == ctx.workdir
      # The gem-shaped checks of a started agent.
      assert w.diagnose["agent"]["boot"]["started"]["result"] == true
      assert w.diagnose["agent"]["lock_path"]["created"]["result"] == true
      assert w.diagnose["extension"]["config"]["valid"]["result"] == true
    end

    workers
  end

  defp split_leader(workers) do
    {[leader], clients} = Enum.split_with(workers, &(TestWorker.role(&1) == "leader"))
    {leader, clients}
  end

  # Two rounds of `record`, the second after the receiver got a first payload, so that the data
  # spans more than one window.
  defp record_two_windows(workers, ctx) do
    expected = record_round(workers, Workload.empty())
    await_payload(ctx.receiver, System.monotonic_time(:millisecond) + 20_000)
    record_round(workers, expected)
  end

  defp record_round(workers, expected) do
    Enum.each(workers, &TestWorker.send!(&1, "record #{@records}"))

    Enum.reduce(workers, expected, fn w, acc ->
      TestWorker.expect!(w, "recorded", 60_000)
      Workload.expect(acc, w.index, @records)
    end)
  end

  defp await_payload(receiver, deadline) do
    cond do
      TestReceiver.summary(receiver)["payloads"] > 0 -> :ok
      System.monotonic_time(:millisecond) > deadline -> flunk("no payload within 20 s")
      true -> Process.sleep(50) && await_payload(receiver, deadline)
    end
  end

  defp assert_totals(ctx, expected) do
    started = System.monotonic_time(:millisecond)
    {ok, rows, summary} = TestReceiver.await_totals(ctx.receiver, expected, 20_000)
    IO.puts(TestReceiver.format_rows(rows))

    IO.puts(
      "receiver: #{summary["payloads"]} payloads, #{summary["duplicates"]} duplicates, " <>
        "#{summary["unauthorized"]} unauthorized, #{summary["dropped_updates"]} dropped updates, " <>
        "#{summary["dropped_samples"]} dropped samples; " <>
        "#{System.monotonic_time(:millisecond) - started} ms after the last stop"
    )

    with %{"requests" => r} <- summary["otlp"] do
      IO.puts(
        "OTLP requests (parsed with the official protobuf classes): #{r["metrics"]} metrics, " <>
          "#{r["traces"]} traces, #{r["logs"]} logs"
      )
    end

    log = File.read(Path.join(ctx.workdir, "appsignal.log")) |> elem(1) |> to_string()

    assert ok,
           "totals differ (see the table above)\n--- log (tail) ---\n#{String.slice(log, -4000, 4000)}"

    assert summary["unauthorized"] == 0
    assert summary["dropped_updates"] == 0
    assert summary["bad_requests"] == 0
    refute String.contains?(log, ctx.secret)
  end
end
