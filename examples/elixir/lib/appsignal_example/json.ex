defmodule AppsignalExample.JSON do
  @moduledoc """
  A small JSON decoder (RFC 8259) for the agent's diagnose report and the receiver's summary:
  Elixir 1.14 has no `JSON` module and this project takes no Hex dependencies. Objects become maps
  with string keys, numbers integers or floats, `null` → `nil`.
  """

  @spec decode(binary) :: {:ok, term} | {:error, String.t()}
  def decode(text) when is_binary(text) do
    {value, rest} = value(skip(text))

    case skip(rest) do
      "" ->
        {:ok, value}

      other ->
        {:error, "trailing data: #{inspect(binary_part(other, 0, min(20, byte_size(other))))}"}
    end
  catch
    {:json, message} -> {:error, message}
  end

  @spec decode!(binary) :: term
  def decode!(text) do
    case decode(text) do
      {:ok, value} -> value
      {:error, message} -> raise ArgumentError, "invalid JSON: #{message}"
    end
  end

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip(rest)
  defp skip(rest), do: rest

  defp value("{" <> rest), do: object(skip(rest), %{})
  defp value("[" <> rest), do: array(skip(rest), [])
  defp value("\"" <> rest), do: string(rest, [])
  defp value("true" <> rest), do: {true, rest}
  defp value("false" <> rest), do: {false, rest}
  defp value("null" <> rest), do: {nil, rest}
  defp value(<<c, _::binary>> = text) when c == ?- or c in ?0..?9, do: number(text)

  defp value(other),
    do: error("unexpected #{inspect(binary_part(other, 0, min(10, byte_size(other))))}")

  defp object("}" <> rest, acc), do: {acc, rest}

  defp object("\"" <> rest, acc) do
    {key, rest} = string(rest, [])

    case skip(rest) do
      ":" <> rest ->
        {v, rest} = value(skip(rest))
        acc = Map.put(acc, key, v)

        case skip(rest) do
          "," <> rest -> object(skip(rest), acc)
          "}" <> rest -> {acc, rest}
          _ -> error("expected , or } in an object")
        end

      _ ->
        error("expected : after a key")
    end
  end

  defp object(_, _), do: error("expected a key or }")

  defp array("]" <> rest, acc), do: {Enum.reverse(acc), rest}

  defp array(text, acc) do
    {v, rest} = value(text)

    case skip(rest) do
      "," <> rest -> array(skip(rest), [v | acc])
      "]" <> rest -> {Enum.reverse([v | acc]), rest}
      _ -> error("expected , or ] in an array")
    end
  end

  defp string("\"" <> rest, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}
  defp string("\\\"" <> rest, acc), do: string(rest, ["\"" | acc])
  defp string("\\\\" <> rest, acc), do: string(rest, ["\\" | acc])
  defp string("\\/" <> rest, acc), do: string(rest, ["/" | acc])
  defp string("\\b" <> rest, acc), do: string(rest, ["\b" | acc])
  defp string("\\f" <> rest, acc), do: string(rest, ["\f" | acc])
  defp string("\\n" <> rest, acc), do: string(rest, ["\n" | acc])
  defp string("\\r" <> rest, acc), do: string(rest, ["\r" | acc])
  defp string("\\t" <> rest, acc), do: string(rest, ["\t" | acc])

  defp string(<<"\\u", hex::binary-size(4), rest::binary>>, acc) do
    case {Integer.parse(hex, 16), rest} do
      {{hi, ""}, <<"\\u", hex2::binary-size(4), rest2::binary>>} when hi in 0xD800..0xDBFF ->
        case Integer.parse(hex2, 16) do
          {lo, ""} when lo in 0xDC00..0xDFFF ->
            string(rest2, [<<0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00)::utf8>> | acc])

          _ ->
            string(rest, ["\uFFFD" | acc])
        end

      {{cp, ""}, _} when cp < 0xD800 or cp > 0xDFFF ->
        string(rest, [<<cp::utf8>> | acc])

      _ ->
        # A lone surrogate or a malformed escape: the replacement character, as the library does.
        string(rest, ["\uFFFD" | acc])
    end
  end

  defp string("\\" <> _, _), do: error("bad escape")
  defp string("", _), do: error("unterminated string")

  defp string(text, acc) do
    # Copy the run up to the next quote or backslash in one piece.
    case :binary.match(text, ["\"", "\\"]) do
      {0, _} ->
        error("unreachable")

      {pos, _} ->
        string(binary_part(text, pos, byte_size(text) - pos), [binary_part(text, 0, pos) | acc])

      :nomatch ->
        error("unterminated string")
    end
  end

  defp number(text) do
    {num, rest} = take_number(text, [])

    if String.contains?(num, [".", "e", "E"]) do
      # "1e5" is valid JSON but not a valid Elixir float literal; normalise.
      normalised =
        num
        |> String.replace(~r/^(-?\d+)([eE])/, "\\1.0\\2")

      case Float.parse(normalised) do
        {f, ""} -> {f, rest}
        _ -> error("bad number #{num}")
      end
    else
      {String.to_integer(num), rest}
    end
  end

  defp take_number(<<c, rest::binary>>, acc) when c in ?0..?9 or c in [?-, ?+, ?., ?e, ?E],
    do: take_number(rest, [c | acc])

  defp take_number(rest, acc), do: {acc |> Enum.reverse() |> List.to_string(), rest}

  defp error(message), do: throw({:json, message})
end
