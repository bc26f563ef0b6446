{:ok, _} = Application.ensure_all_started(:inets)
ExUnit.start(timeout: 180_000)
