//! Reading a Prometheus text exposition in the tests: its samples, and the name a worker's series
//! is exposed as (the fleet's app `demo-app`, environment `demo`).

use std::collections::BTreeMap;

/// The samples of a text exposition: `name{labels}` → value.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The worker's series `name{a=x,b=y}` as the endpoint exposes it under `exposed_name`
/// (`requests_total`, `response_time_count`, …): labels sorted, the app and environment added.
pub fn exposed(series: &str, exposed_name: &str) -> String {
    let (_, tags) = series
        .split_once('{')
        .unwrap_or_else(|| panic!("{series:?} has no tags"));
    let tags = tags.trim_end_matches('}');
    let mut labels = vec![
        ("appsignal_app".to_owned(), "demo-app".to_owned()),
        ("appsignal_env".to_owned(), "demo".to_owned()),
    ];
    labels.extend(tags.split(',').filter(|t| !t.is_empty()).map(|t| {
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("tag {t:?} has no value"));
        (k.to_owned(), v.to_owned())
    }));
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{exposed_name}{{{}}}", labels.join(","))
}
