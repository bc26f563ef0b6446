//! Filtering and ignore rules: `filter_parameters` / `filter_session_data` keys replaced by
//! `[FILTERED]` (case-insensitive, at any depth in maps and in maps inside arrays), and the
//! `ignore_actions` / `ignore_namespaces` / `ignore_errors` decisions.
//!
//! An ignored action or namespace drops the transaction (or root span) entirely: no metrics, no
//! sample. An ignored error class only removes the error: the transaction still counts (count,
//! duration, event groups) as one without an error, and is sampled only if slow or sampled.

use crate::apm::ApmConfig;
use crate::data::Data;

/// What replaces a filtered value.
pub const FILTERED: &str = "[FILTERED]";

/// Replaces the value of every key in `keys` (case-insensitive) by `[FILTERED]`, at any depth.
pub fn filter_keys(data: &mut Data, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    filter_inner(data, keys, 0);
}

/// Deeper than this, values are left as they are (a `Data` built through the C interface is a
/// copy tree, so this only bounds recursion on pathological input).
const MAX_DEPTH: usize = 64;

fn filter_inner(data: &mut Data, keys: &[String], depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match data {
        Data::Map(map) => {
            for (key, value) in map.iter_mut() {
                if keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    *value = Data::String(FILTERED.to_string());
                } else {
                    filter_inner(value, keys, depth + 1);
                }
            }
        }
        Data::Array(items) => {
            for item in items {
                filter_inner(item, keys, depth + 1);
            }
        }
        _ => {}
    }
}

/// Sample data as it may leave the process: `params` filtered by `filter_parameters`,
/// `session_data` by `filter_session_data`, other keys unchanged.
pub fn filter_sample_data(key: &str, data: &Data, config: &ApmConfig) -> Data {
    let mut copy = data.clone();
    match key {
        "params" => filter_keys(&mut copy, &config.filter_parameters),
        "session_data" => filter_keys(&mut copy, &config.filter_session_data),
        _ => {}
    }
    copy
}

/// Whether a transaction of this namespace and action is dropped entirely.
pub fn is_ignored(namespace: &str, action: Option<&str>, config: &ApmConfig) -> bool {
    config.ignore_namespaces.iter().any(|n| n == namespace)
        || action.is_some_and(|a| config.ignore_actions.iter().any(|i| i == a))
}

/// Whether an error of this class is left out.
pub fn is_error_ignored(class: &str, config: &ApmConfig) -> bool {
    config.ignore_errors.iter().any(|e| e == class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: Vec<(&str, Data)>) -> Data {
        let mut m = Data::new_map();
        for (k, v) in pairs {
            m.map_set(k.to_string(), v);
        }
        m
    }

    fn s(v: &str) -> Data {
        Data::String(v.into())
    }

    #[test]
    fn filters_nested_keys_case_insensitively() {
        let mut data = map(vec![
            ("PASSWORD", s("hunter2")),
            ("name", s("bob")),
            (
                "user",
                map(vec![
                    ("password", s("x")),
                    ("secret", map(vec![("deep", s("y"))])),
                    ("profile", map(vec![("Password", Data::Integer(1))])),
                ]),
            ),
            (
                "items",
                Data::Array(vec![map(vec![("password", s("a"))]), s("password")]),
            ),
        ]);
        filter_keys(&mut data, &["password".into(), "Secret".into()]);
        assert_eq!(
            data.to_json(),
            r#"{"PASSWORD":"[FILTERED]","items":[{"password":"[FILTERED]"},"password"],"name":"bob","user":{"password":"[FILTERED]","profile":{"Password":"[FILTERED]"},"secret":"[FILTERED]"}}"#
        );
    }

    #[test]
    fn only_params_and_session_data_are_filtered() {
        let config = ApmConfig {
            filter_parameters: vec!["password".into()],
            filter_session_data: vec!["token".into()],
            ..ApmConfig::default()
        };
        let data = map(vec![("password", s("p")), ("token", s("t"))]);
        assert_eq!(
            filter_sample_data("params", &data, &config).to_json(),
            r#"{"password":"[FILTERED]","token":"t"}"#
        );
        assert_eq!(
            filter_sample_data("session_data", &data, &config).to_json(),
            r#"{"password":"p","token":"[FILTERED]"}"#
        );
        assert_eq!(filter_sample_data("custom_data", &data, &config), data);
    }

    #[test]
    fn no_keys_leaves_data_alone() {
        let mut data = map(vec![("password", s("p"))]);
        let before = data.clone();
        filter_keys(&mut data, &[]);
        assert_eq!(data, before);
    }

    #[test]
    fn ignore_rules_match_exactly() {
        let config = ApmConfig {
            ignore_actions: vec!["Health#check".into()],
            ignore_namespaces: vec!["admin".into()],
            ignore_errors: vec!["NotFound".into()],
            ..ApmConfig::default()
        };
        assert!(is_ignored("web", Some("Health#check"), &config));
        assert!(is_ignored("admin", Some("Any#thing"), &config));
        assert!(is_ignored("admin", None, &config));
        assert!(!is_ignored("web", Some("health#check"), &config));
        assert!(!is_ignored("web", None, &config));
        assert!(is_error_ignored("NotFound", &config));
        assert!(!is_error_ignored("NotFoundError", &config));
    }
}
