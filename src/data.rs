//! The value type behind `appsignal_data_t`: maps, arrays and scalars that integrations build
//! (metric tags, sample data, backtraces) and that serialise to JSON.
//!
//! Maps keep their keys sorted (a `BTreeMap`), so two maps with the same entries are equal and
//! render the same JSON whatever order the keys were set in. Setting a key twice keeps the last value.

use std::collections::BTreeMap;

/// A data value as built through the C interface.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Array(Vec<Data>),
    Map(BTreeMap<String, Data>),
}

impl Data {
    pub fn new_map() -> Self {
        Data::Map(BTreeMap::new())
    }

    pub fn new_array() -> Self {
        Data::Array(Vec::new())
    }

    /// Sets `key` in a map. Returns false (and changes nothing) when `self` is not a map.
    pub fn map_set(&mut self, key: String, value: Data) -> bool {
        match self {
            Data::Map(map) => {
                map.insert(key, value);
                true
            }
            _ => false,
        }
    }

    /// Appends to an array. Returns false (and changes nothing) when `self` is not an array.
    pub fn array_append(&mut self, value: Data) -> bool {
        match self {
            Data::Array(items) => {
                items.push(value);
                true
            }
            _ => false,
        }
    }

    /// JSON rendering. Non-finite floats have no JSON form and become `null`.
    pub fn to_json_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Data::Null => Value::Null,
            Data::Bool(b) => Value::Bool(*b),
            Data::Integer(i) => Value::from(*i),
            Data::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Data::String(s) => Value::String(s.clone()),
            Data::Array(items) => Value::Array(items.iter().map(Data::to_json_value).collect()),
            Data::Map(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.to_json_value()))
                    .collect(),
            ),
        }
    }

    pub fn to_json(&self) -> String {
        self.to_json_value().to_string()
    }

    /// A scalar rendered as a tag value: strings as they are, numbers and booleans in their
    /// JSON form. Maps and arrays are not valid tag values and give `None`.
    pub fn tag_value(&self) -> Option<String> {
        match self {
            Data::String(s) => Some(s.clone()),
            Data::Integer(i) => Some(i.to_string()),
            Data::Float(f) => Some(f.to_string()),
            Data::Bool(b) => Some(b.to_string()),
            Data::Null => Some(String::new()),
            Data::Array(_) | Data::Map(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_equal_whatever_the_insertion_order() {
        let mut a = Data::new_map();
        a.map_set("b".into(), Data::Integer(2));
        a.map_set("a".into(), Data::String("x".into()));
        let mut b = Data::new_map();
        b.map_set("a".into(), Data::String("x".into()));
        b.map_set("b".into(), Data::Integer(2));
        assert_eq!(a, b);
        assert_eq!(a.to_json(), r#"{"a":"x","b":2}"#);
    }

    #[test]
    fn setters_refuse_the_wrong_container() {
        let mut array = Data::new_array();
        assert!(!array.map_set("k".into(), Data::Null));
        assert!(array.array_append(Data::Float(f64::NAN)));
        assert_eq!(array.to_json(), "[null]");
        let mut map = Data::new_map();
        assert!(!map.array_append(Data::Null));
    }

    #[test]
    fn nested_data_renders_as_json() {
        let mut inner = Data::new_array();
        inner.array_append(Data::Bool(true));
        inner.array_append(Data::Integer(-3));
        let mut map = Data::new_map();
        map.map_set("list".into(), inner);
        map.map_set("nothing".into(), Data::Null);
        assert_eq!(map.to_json(), r#"{"list":[true,-3],"nothing":null}"#);
    }
}
