//! Durations written with units (`"250ms"`, `"5s"`, `"1m 30s"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration a config may give. Deadlines are a clock reading
/// plus a duration (`Instant + Duration` panics on overflow), some of them
/// a duration times a count; 100 years is far from both limits and longer
/// than any timeout, TTL or hold means.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration parsed from a string with units; a bare number is rejected
/// because `timeout = 5` is ambiguous, and one over [`MAX_DURATION`] too.
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
                let d = humantime::parse_duration(v)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "invalid duration {v:?}: longer than 100 years (\"36500d\")"
                    )));
                }
                Ok(ConfigDuration(d))
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

    /// Found by fuzzing (fuzz/regressions/config/): a duration no clock
    /// reading can be added to was accepted, and every connection's
    /// header deadline then panicked.
    #[test]
    fn durations_a_deadline_cannot_hold_are_rejected() {
        let h: Holder = toml::from_str("d = \"36500d\"").unwrap();
        assert_eq!(h.d.0, MAX_DURATION);
        for huge in ["36501d", "18446744073709551615s", "999999999999h"] {
            let e = toml::from_str::<Holder>(&format!("d = \"{huge}\"")).err();
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("longer than 100 years"), "{huge}: {e}");
        }
    }
}
