defmodule AppsignalExample.Nif do
  @moduledoc """
  The NIFs of `c_src/appsignal_nif.c` (priv/appsignal_nif.so), one per libappsignal function.
  Use `AppsignalExample` instead; these take binaries, numbers and `%{binary => binary}` tags only.
  """
  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:appsignal_example), ~c"appsignal_nif")
    :erlang.load_nif(path, 0)
  end

  def start, do: :erlang.nif_error(:not_loaded)
  def stop, do: :erlang.nif_error(:not_loaded)
  def diagnose, do: :erlang.nif_error(:not_loaded)
  def env_put(_key, _value), do: :erlang.nif_error(:not_loaded)
  def env_get(_key), do: :erlang.nif_error(:not_loaded)
  def env_delete(_key), do: :erlang.nif_error(:not_loaded)
  def env_clear, do: :erlang.nif_error(:not_loaded)
  def increment_counter(_name, _value, _tags), do: :erlang.nif_error(:not_loaded)
  def set_gauge(_name, _value, _tags), do: :erlang.nif_error(:not_loaded)
  def add_distribution_value(_name, _value, _tags), do: :erlang.nif_error(:not_loaded)

  # Spans: resources (freed by appsignal_free_span when garbage collected).
  def create_root_span(_namespace), do: :erlang.nif_error(:not_loaded)
  def create_child_span(_parent), do: :erlang.nif_error(:not_loaded)
  def set_span_name(_span, _name), do: :erlang.nif_error(:not_loaded)
  def add_span_error(_span, _name, _message, _backtrace), do: :erlang.nif_error(:not_loaded)
  def close_span(_span), do: :erlang.nif_error(:not_loaded)
  def span_id(_span), do: :erlang.nif_error(:not_loaded)
  def span_to_json(_span), do: :erlang.nif_error(:not_loaded)
end
