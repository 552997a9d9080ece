//! Durations written with units (`"250ms"`, `"5s"`, `"1m 30s"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration parsed from a string with units; a bare number is rejected
/// because `timeout = 5` is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with units such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v)
                    .map(ConfigDuration)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        d: ConfigDuration,
    }

    #[test]
    fn parses_units_and_rejects_bare_numbers() {
        let h: Holder = toml::from_str("d = \"250ms\"").unwrap();
        assert_eq!(h.d.0, Duration::from_millis(250));
        let h: Holder = toml::from_str("d = \"1m 30s\"").unwrap();
        assert_eq!(h.d.0, Duration::from_secs(90));
        assert!(toml::from_str::<Holder>("d = 5").is_err());
        assert!(toml::from_str::<Holder>("d = \"5 parsecs\"").is_err());
    }
}
