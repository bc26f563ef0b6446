# The Elixir example integration of libappsignal. No Hex dependencies: the NIF is built by the
# compiler `Mix.Tasks.Compile.AppsignalNif` defined below, in this file, so that it exists before
# Mix needs it (a compiler under lib/ would only be compiled by the compilers that run after it).

defmodule Mix.Tasks.Compile.AppsignalNif do
  @moduledoc """
  Runs `make` in `c_src/` to build `priv/appsignal_nif.so` against `appsignal.h` and
  `libappsignal.so`.

  Paths: `APPSIGNAL_INCLUDE` (directory of appsignal.h; default: the repository root, three levels
  up) and `APPSIGNAL_LIB_DIR` (directory of libappsignal.so; default: the first of
  `$CARGO_TARGET_DIR/release/deps`, `$CARGO_TARGET_DIR/release`, with `CARGO_TARGET_DIR` defaulting to
  `<repository>/target`, that holds the library). erl_nif.h comes from this VM's `code:root_dir()`.
  """
  use Mix.Task.Compiler

  @recursive false

  @impl true
  def run(_args) do
    root = Path.expand("../..", File.cwd!())

    with {:ok, lib_dir} <- lib_dir(root),
         {:ok, erl_include} <- erl_include() do
      env = [
        {"APPSIGNAL_INCLUDE", System.get_env("APPSIGNAL_INCLUDE") || root},
        {"APPSIGNAL_LIB_DIR", lib_dir},
        {"ERL_INCLUDE", erl_include}
      ]

      case System.cmd("make", ["-C", "c_src", "--no-print-directory"],
             env: env,
             stderr_to_stdout: true
           ) do
        {out, 0} ->
          if String.contains?(out, " -o ") do
            Mix.shell().info("Compiled c_src/appsignal_nif.c (libappsignal in #{lib_dir})")
          end

          {:ok, []}

        {out, status} ->
          Mix.shell().error(out)
          fail("make -C c_src failed with status #{status}")
      end
    else
      {:error, message} -> fail(message)
    end
  end

  @impl true
  def clean do
    System.cmd("make", ["-C", "c_src", "clean"], env: [{"APPSIGNAL_LIB_DIR", "-"}])
    :ok
  end

  defp lib_dir(root) do
    case System.get_env("APPSIGNAL_LIB_DIR") do
      dir when is_binary(dir) and dir != "" ->
        {:ok, Path.expand(dir)}

      _ ->
        # CARGO_TARGET_DIR relative to the current directory, as cargo reads it.
        target =
          case System.get_env("CARGO_TARGET_DIR") do
            dir when is_binary(dir) and dir != "" -> Path.expand(dir)
            _ -> Path.join(root, "target")
          end

        candidates = [Path.join([target, "release", "deps"]), Path.join([target, "release"])]

        case Enum.find(candidates, &File.regular?(Path.join(&1, "libappsignal.so"))) do
          nil ->
            {:error,
             "libappsignal.so not found in #{Enum.join(candidates, " or ")}; build it " <>
               "(cargo build --release -p appsignal-testkit --example receiver) or set APPSIGNAL_LIB_DIR"}

          dir ->
            {:ok, dir}
        end
    end
  end

  defp erl_include do
    root = List.to_string(:code.root_dir())

    case [Path.join(root, "usr/include") | Path.wildcard(Path.join(root, "erts-*/include"))]
         |> Enum.find(&File.regular?(Path.join(&1, "erl_nif.h"))) do
      nil -> {:error, "erl_nif.h not found under #{root} (install erlang-dev)"}
      dir -> {:ok, dir}
    end
  end

  defp fail(message) do
    diagnostic = %Mix.Task.Compiler.Diagnostic{
      compiler_name: "appsignal_nif",
      file: Path.expand("c_src/appsignal_nif.c"),
      message: message,
      position: nil,
      severity: :error
    }

    Mix.shell().error(message)
    {:error, [diagnostic]}
  end
end

defmodule AppsignalExample.MixProject do
  use Mix.Project

  def project do
    [
      app: :appsignal_example,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:appsignal_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger, :inets]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
