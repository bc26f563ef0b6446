{:ok, _} = Application.ensure_all_started(:inets)
# The OTLP tests need the Python OTLP receiver: `run.sh otlp` runs them alone (--only otlp).
ExUnit.start(timeout: 180_000, exclude: [:otlp])
