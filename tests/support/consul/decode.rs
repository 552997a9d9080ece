//! Request bodies read the way Go's `encoding/json` reads them into Consul's
//! structs: object keys match field names case-insensitively, snake_case
//! aliases (`check_id`, `deregister_critical_service_after`) are accepted,
//! unknown keys are ignored, `null` is the same as absent, and durations are
//! Go duration strings or integer nanoseconds.
//!
//! Every failure is a message for `400 Request decode failed: …`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::duration;

/// One JSON object of a request body.
#[derive(Clone, Copy)]
pub struct Fields<'a>(&'a Map<String, Value>);

/// `CheckID`, `checkid` and `check_id` are the same field.
fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn type_error(name: &str, expected: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("json: cannot unmarshal {kind} into field {name} of type {expected}")
}

impl<'a> Fields<'a> {
    /// The top-level object of a body.
    pub fn of(value: &'a Value) -> Result<Self, String> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            other => Err(type_error("(body)", "object", other)),
        }
    }

    /// True when the object has no non-null field at all.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(Value::is_null)
    }

    /// The value of the first of `names` present (compared case- and
    /// underscore-insensitively); `null` counts as absent.
    pub fn get(&self, names: &[&str]) -> Option<&'a Value> {
        names.iter().find_map(|name| {
            let wanted = normalize(name);
            self.0
                .iter()
                .find(|(key, value)| !value.is_null() && normalize(key) == wanted)
                .map(|(_, value)| value)
        })
    }

    pub fn string(&self, names: &[&str]) -> Result<Option<String>, String> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(type_error(names[0], "string", other)),
        }
    }

    pub fn u64(&self, names: &[&str]) -> Result<Option<u64>, String> {
        match self.get(names) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| type_error(names[0], "uint", value)),
        }
    }

    pub fn bool(&self, names: &[&str]) -> Result<Option<bool>, String> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(type_error(names[0], "bool", other)),
        }
    }

    /// A Go duration string or integer nanoseconds; negative means zero.
    pub fn duration(&self, names: &[&str]) -> Result<Option<Duration>, String> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::String(text)) => match duration::parse(text) {
                Some(d) => Ok(Some(d.positive().unwrap_or(Duration::ZERO))),
                None => Err(format!("time: invalid duration {text:?}")),
            },
            Some(Value::Number(n)) => match n.as_i64() {
                Some(nanos) => Ok(Some(Duration::from_nanos(nanos.max(0).unsigned_abs()))),
                None => Err(format!("invalid duration {n}")),
            },
            Some(other) => Err(type_error(names[0], "duration", other)),
        }
    }

    pub fn strings(&self, names: &[&str]) -> Result<Vec<String>, String> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(type_error(names[0], "[]string", other)),
                })
                .collect(),
            Some(other) => Err(type_error(names[0], "[]string", other)),
        }
    }

    pub fn string_map(&self, names: &[&str]) -> Result<BTreeMap<String, String>, String> {
        match self.get(names) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(type_error(names[0], "map[string]string", other)),
                })
                .collect(),
            Some(other) => Err(type_error(names[0], "map[string]string", other)),
        }
    }

    pub fn object(&self, names: &[&str]) -> Result<Option<Fields<'a>>, String> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields(map))),
            Some(other) => Err(type_error(names[0], "object", other)),
        }
    }

    pub fn objects(&self, names: &[&str]) -> Result<Vec<Fields<'a>>, String> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Object(map) => Ok(Fields(map)),
                    other => Err(type_error(names[0], "object", other)),
                })
                .collect(),
            Some(other) => Err(type_error(names[0], "[]object", other)),
        }
    }

    /// A map of objects, e.g. `TaggedAddresses`.
    pub fn object_map(&self, names: &[&str]) -> Result<Vec<(String, Fields<'a>)>, String> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::Object(inner) => Ok((k.clone(), Fields(inner))),
                    other => Err(type_error(names[0], "object", other)),
                })
                .collect(),
            Some(other) => Err(type_error(names[0], "map[string]object", other)),
        }
    }
}

/// Parses a whole body as JSON (an empty body is an empty object).
pub fn parse_body(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}
