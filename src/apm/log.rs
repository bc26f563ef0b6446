//! Log lines from `appsignal_log`: severity and format checked, the message parsed into attributes
//! when its format says so, and the line handed to the agent as a [`LogLine`].
//!
//! Severity: 2 debug, 3 info, 5 warn, 6 error, 7 fatal. Other values are clamped (below 2 →
//! debug, 4 → info, above 7 → fatal) with a (rate-limited) log line. Format: 0 plaintext,
//! 1 logfmt, 2 JSON, 3 autodetect; another value is plaintext with a log line.
//!
//! Parsed attributes: logfmt pairs (`key=value`, `key="quoted \" value"`; a bare `key` is `true`;
//! values stay strings) or a JSON object's top-level entries (values as they are). Autodetect
//! picks JSON when the message is a JSON object, logfmt when every token is a `key=value` pair,
//! else plaintext. The caller's `attributes` win over parsed ones; the message is kept as given.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;

use serde_json::{Map, Value};

use crate::apm::{config, now_ns, truncate, warn_limited, MAX_BODY, MAX_KEYS, MAX_TEXT};
use crate::data::Data;
use crate::sample::{data_from_json, LogLine};

pub const FORMAT_PLAINTEXT: i32 = 0;
pub const FORMAT_LOGFMT: i32 = 1;
pub const FORMAT_JSON: i32 = 2;
pub const FORMAT_AUTODETECT: i32 = 3;

/// The severity's name after clamping, and the clamped number.
pub fn severity(value: i32) -> (&'static str, i32, bool) {
    match value {
        2 => ("debug", 2, true),
        3 => ("info", 3, true),
        5 => ("warn", 5, true),
        6 => ("error", 6, true),
        7 => ("fatal", 7, true),
        v if v < 2 => ("debug", 2, false),
        4 => ("info", 3, false),
        _ => ("fatal", 7, false),
    }
}

/// Parses logfmt. `strict`: every token must be a `key=value` pair (for autodetect); otherwise
/// bare words become `true`. None when nothing was found (or, strict, when a token is not a pair).
pub fn parse_logfmt(message: &str, strict: bool) -> Option<Map<String, Value>> {
    let mut pairs = Map::new();
    let mut chars = message.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            if strict || key.is_empty() {
                return None;
            }
            if pairs.len() < MAX_KEYS {
                pairs.insert(key, Value::Bool(true));
            }
            continue;
        }
        chars.next(); // '='
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            if !closed && strict {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            if strict {
                return None;
            }
            continue;
        }
        if pairs.len() < MAX_KEYS || pairs.contains_key(&key) {
            pairs.insert(key, Value::String(value));
        }
    }
    (!pairs.is_empty()).then_some(pairs)
}

fn parse_json_object(message: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(message.trim()) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The format actually applied and the attributes parsed from the message.
fn parse_message(format: i32, message: &str) -> (&'static str, Map<String, Value>) {
    match format {
        FORMAT_LOGFMT => ("logfmt", parse_logfmt(message, false).unwrap_or_default()),
        FORMAT_JSON => ("json", parse_json_object(message).unwrap_or_default()),
        FORMAT_AUTODETECT => {
            if message.trim_start().starts_with('{') {
                if let Some(map) = parse_json_object(message) {
                    return ("json", map);
                }
            }
            match parse_logfmt(message, true) {
                Some(map) => ("logfmt", map),
                None => ("plaintext", Map::new()),
            }
        }
        _ => ("plaintext", Map::new()),
    }
}

static BAD_SEVERITY: AtomicI64 = AtomicI64::new(0);
static BAD_FORMAT: AtomicI64 = AtomicI64::new(0);

/// The log line as handed to the agent (see the module documentation and docs/apm.md).
pub fn build_line(
    group: &str,
    severity_value: i32,
    format: i32,
    message: &str,
    attributes: Option<&Data>,
) -> LogLine {
    let (severity_name, severity_number, valid) = severity(severity_value);
    if !valid {
        warn_limited(
            &BAD_SEVERITY,
            &format!("appsignal_log: unknown severity {severity_value}; used {severity_name}"),
        );
    }
    if !(FORMAT_PLAINTEXT..=FORMAT_AUTODETECT).contains(&format) {
        warn_limited(
            &BAD_FORMAT,
            &format!("appsignal_log: unknown format {format}; used plaintext"),
        );
    }
    let message = truncate(message.to_string(), MAX_BODY);
    let (format_name, parsed) = parse_message(format, &message);
    let mut parsed = match data_from_json(Value::Object(parsed)) {
        Data::Map(map) => map,
        _ => BTreeMap::new(),
    };
    match attributes {
        Some(Data::Map(map)) => {
            for (k, v) in map {
                if parsed.len() < MAX_KEYS || parsed.contains_key(k) {
                    parsed.insert(k.clone(), v.clone());
                }
            }
        }
        Some(_) => warn_limited(
            &BAD_FORMAT,
            "appsignal_log: attributes must be a map; ignored",
        ),
        None => {}
    }
    LogLine {
        attributes: parsed,
        format: format_name.to_owned(),
        group: truncate(group.to_string(), MAX_TEXT),
        hostname: config().hostname.clone(),
        message,
        severity: severity_name.to_owned(),
        severity_number,
        timestamp: now_ns() / 1_000_000,
    }
}

/// Builds the line and hands it to the agent.
pub fn log(group: &str, severity: i32, format: i32, message: &str, attributes: Option<&Data>) {
    crate::recorder::submit_log(build_line(group, severity, format, message, attributes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The line as the JSON it is sent as.
    fn build_line(
        group: &str,
        severity: i32,
        format: i32,
        message: &str,
        attributes: Option<&Data>,
    ) -> Value {
        serde_json::to_value(super::build_line(
            group, severity, format, message, attributes,
        ))
        .unwrap()
    }

    #[test]
    fn severities_are_clamped() {
        assert_eq!(severity(2).0, "debug");
        assert_eq!(severity(3).0, "info");
        assert_eq!(severity(5).0, "warn");
        assert_eq!(severity(6).0, "error");
        assert_eq!(severity(7).0, "fatal");
        assert_eq!(severity(0), ("debug", 2, false));
        assert_eq!(severity(-9), ("debug", 2, false));
        assert_eq!(severity(4), ("info", 3, false));
        assert_eq!(severity(99), ("fatal", 7, false));
    }

    #[test]
    fn logfmt_parsing() {
        let m = parse_logfmt(
            r#"at=info method=GET path="/a b" msg="say \"hi\"" empty= flag"#,
            false,
        )
        .unwrap();
        assert_eq!(m["at"], "info");
        assert_eq!(m["path"], "/a b");
        assert_eq!(m["msg"], r#"say "hi""#);
        assert_eq!(m["empty"], "");
        assert_eq!(m["flag"], true);
        assert!(parse_logfmt("just some words", true).is_none());
        assert!(parse_logfmt("a=1 words", true).is_none());
        assert!(parse_logfmt("a=\"unterminated", true).is_none());
        assert_eq!(
            parse_logfmt("a=\"unterminated", false).unwrap()["a"],
            "unterminated"
        );
        assert!(parse_logfmt("", false).is_none());
        assert!(parse_logfmt("=x", true).is_none());
    }

    #[test]
    fn formats_parse_into_attributes() {
        let line = build_line("app", 3, FORMAT_LOGFMT, "user=bob action=login", None);
        assert_eq!(line["attributes"]["user"], "bob");
        assert_eq!(line["format"], "logfmt");
        assert_eq!(line["message"], "user=bob action=login");

        let line = build_line(
            "app",
            6,
            FORMAT_JSON,
            r#"{"user":"bob","n":2,"nested":{"a":[1]}}"#,
            None,
        );
        assert_eq!(line["attributes"]["n"], 2);
        assert_eq!(line["attributes"]["nested"]["a"][0], 1);
        assert_eq!(line["severity"], "error");
        assert_eq!(line["severity_number"], 6);

        let line = build_line("app", 3, FORMAT_JSON, "not json", None);
        assert_eq!(line["attributes"], json!({}));

        let line = build_line("app", 3, FORMAT_PLAINTEXT, "a=b", None);
        assert_eq!(line["attributes"], json!({}));
        assert_eq!(line["format"], "plaintext");
    }

    #[test]
    fn autodetect() {
        assert_eq!(
            build_line("g", 3, FORMAT_AUTODETECT, r#" {"a":1}"#, None)["format"],
            "json"
        );
        assert_eq!(
            build_line("g", 3, FORMAT_AUTODETECT, "a=1 b=\"x y\"", None)["format"],
            "logfmt"
        );
        assert_eq!(
            build_line("g", 3, FORMAT_AUTODETECT, "Started GET /", None)["format"],
            "plaintext"
        );
        assert_eq!(
            build_line("g", 3, FORMAT_AUTODETECT, "{broken", None)["format"],
            "plaintext"
        );
        assert_eq!(build_line("g", 3, 42, "a=1", None)["format"], "plaintext");
    }

    #[test]
    fn explicit_attributes_win_and_lines_are_submitted() {
        crate::apm::test_support::setup();
        let mut attrs = Data::new_map();
        attrs.map_set("user".into(), Data::String("alice".into()));
        attrs.map_set("request_id".into(), Data::Integer(5));
        log("log-test-group", 9, FORMAT_LOGFMT, "user=bob", Some(&attrs));
        let lines: Vec<_> = crate::recorder::recorded()
            .into_iter()
            .filter_map(|r| match r {
                crate::recorder::Recorded::Log(l) if l["group"] == "log-test-group" => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["attributes"]["user"], "alice");
        assert_eq!(l["attributes"]["request_id"], 5);
        assert_eq!(l["severity"], "fatal");
        assert_eq!(l["hostname"], "test-host");
        assert!(l["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    }
}
