//! Go duration strings (`time.ParseDuration` and `Duration.String`).
//!
//! Consul reads `?wait=` and the `TTL`/`Interval`/`Timeout` body fields with
//! Go's parser (`"10s"`, `"1m30s"`, `"250ms"`, `"1.5h"`), and prints check
//! intervals with Go's formatter (`"1h30m0s"`, `"250ms"`).

use std::time::Duration;

const NANOS_PER_UNIT: [(&str, u128); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("", 0),
];

/// A parsed Go duration: its sign and magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl GoDuration {
    /// The duration when positive, `None` for zero or negative values.
    pub fn positive(self) -> Option<Duration> {
        (!self.negative && !self.magnitude.is_zero()).then_some(self.magnitude)
    }
}

/// Parses like Go's `time.ParseDuration`; `None` where Go returns an error.
pub fn parse(text: &str) -> Option<GoDuration> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after_number
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_number.len(), |(i, _)| i);
        let (unit, after_unit) = after_number.split_at(unit_len);
        let scale = NANOS_PER_UNIT
            .iter()
            .find(|(name, scale)| *name == unit && *scale > 0)?
            .1;
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        let mut divisor: u128 = 1;
        let mut frac_value: u128 = 0;
        for digit in frac_part.bytes().take(30) {
            frac_value = frac_value * 10 + u128::from(digit - b'0');
            divisor *= 10;
        }
        part = part.checked_add(frac_value * scale / divisor)?;
        total = total.checked_add(part)?;
        rest = after_unit;
    }
    // Go durations are int64 nanoseconds.
    if total > i64::MAX as u128 {
        return None;
    }
    let magnitude = Duration::from_nanos(u64::try_from(total).ok()?);
    Some(GoDuration {
        negative,
        magnitude,
    })
}

/// Formats like Go's `Duration.String`: `"0s"`, `"250ms"`, `"1m30s"`,
/// `"1h30m0s"`, `"1.5s"`.
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}\u{b5}s", decimal(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = decimal(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / unit` with the fraction's trailing zeros removed (`1.5`, `250`).
fn decimal(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}
