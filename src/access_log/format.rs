//! Access log line formats: JSON, HAProxy's, Apache/nginx "combined", and
//! templates of `%field`s. Runs on the writer thread, never on the data path.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use super::record::{Protocol, Record, Text};

/// How lines are written.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// One JSON object per line, every field by name.
    Json,
    /// HAProxy's HTTP log, as its `log-format`
    /// `%ci:%cp [%tr] %ft %b/%s %Tc/%Tr/%Ta %ST %B %tsc %rc %ID %{+Q}r`.
    Haproxy,
    /// Apache's and nginx's "combined".
    Combined,
    /// A line of text with `%field`s.
    Template(Vec<Piece>),
}

/// A part of a template line.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Literal(String),
    Field(Field),
}

/// A field a template may name, as `%name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    Listener,
    ClientIp,
    ClientPort,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    BytesIn,
    BytesOut,
    Backend,
    Endpoint,
    Attempts,
    Retries,
    ConnectMs,
    TtfbMs,
    DurationMs,
    Termination,
    TerminationState,
    RequestId,
    TraceId,
    TlsVersion,
    TlsSni,
    UserAgent,
    Referer,
}

/// Every field by its template name (and JSON key).
pub const FIELDS: &[(&str, Field)] = &[
    ("time", Field::Time),
    ("listener", Field::Listener),
    ("client_ip", Field::ClientIp),
    ("client_port", Field::ClientPort),
    ("method", Field::Method),
    ("host", Field::Host),
    ("path", Field::Path),
    ("protocol", Field::Protocol),
    ("status", Field::Status),
    ("bytes_in", Field::BytesIn),
    ("bytes_out", Field::BytesOut),
    ("backend", Field::Backend),
    ("endpoint", Field::Endpoint),
    ("attempts", Field::Attempts),
    ("retries", Field::Retries),
    ("connect_ms", Field::ConnectMs),
    ("ttfb_ms", Field::TtfbMs),
    ("duration_ms", Field::DurationMs),
    ("termination", Field::Termination),
    ("termination_state", Field::TerminationState),
    ("request_id", Field::RequestId),
    ("trace_id", Field::TraceId),
    ("tls_version", Field::TlsVersion),
    ("tls_sni", Field::TlsSni),
    ("user_agent", Field::UserAgent),
    ("referer", Field::Referer),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("unknown field `%{0}` (known: {known})", known = known_fields())]
    UnknownField(String),
    #[error("`%` at the end of the template; write `%%` for a percent sign")]
    Dangling,
    #[error("the template names no field")]
    NoField,
}

fn known_fields() -> String {
    FIELDS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Format {
    /// `json`, `haproxy`, `combined`, or a template with `%field`s.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        match text {
            "json" => Ok(Self::Json),
            "haproxy" => Ok(Self::Haproxy),
            "combined" => Ok(Self::Combined),
            template => parse_template(template).map(Self::Template),
        }
    }

    /// Appends `record`'s line, newline included, to `out`. Allocates
    /// nothing: numbers and addresses are formatted straight into `out`,
    /// and `clock` formats the time once a second.
    pub fn write(&self, record: &Record, clock: &mut Clock, out: &mut Vec<u8>) {
        match self {
            Self::Json => json(record, clock, out),
            Self::Haproxy => haproxy(record, clock, out),
            Self::Combined => combined(record, clock, out),
            Self::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
                        Piece::Field(f) => field(record, *f, clock, out),
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

fn parse_template(template: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(FormatError::Dangling);
        }
        // The longest known name wins, so `%status_x` is `%status` + "_x"
        // only if `status_x` is not a field.
        let name = &rest[..len];
        let found = (1..=len).rev().find_map(|n| {
            FIELDS
                .iter()
                .find(|(f, _)| *f == &name[..n])
                .map(|(_, f)| (n, *f))
        });
        let Some((n, f)) = found else {
            return Err(FormatError::UnknownField(name.to_string()));
        };
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Field(f));
        rest = &rest[n..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
        return Err(FormatError::NoField);
    }
    Ok(pieces)
}

/// The writer's clock: the current second formatted once, in both forms.
#[derive(Debug, Default)]
pub struct Clock {
    second: Option<u64>,
    /// `2026-12-04T13:15:05`
    rfc3339: String,
    /// `04/Dec/2026:13:15:05`
    clf: String,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Clock {
    /// Seconds and milliseconds since the epoch, after making sure the
    /// second's texts are current.
    fn at(&mut self, t: SystemTime) -> u32 {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            // "YYYY-MM-DDTHH:MM:SSZ": fixed positions.
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            self.rfc3339 = s.get(..19).unwrap_or(&s).to_string();
            let month = s
                .get(5..7)
                .and_then(|m| m.parse::<usize>().ok())
                .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
                .copied()
                .unwrap_or("???");
            self.clf = format!(
                "{}/{month}/{}:{}",
                s.get(8..10).unwrap_or("??"),
                s.get(0..4).unwrap_or("????"),
                s.get(11..19).unwrap_or("??:??:??")
            );
        }
        since.subsec_millis()
    }

    /// `2026-12-04T13:15:05.123Z`
    fn write_rfc3339(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        let ms = self.at(t);
        out.extend_from_slice(self.rfc3339.as_bytes());
        let _ = write!(out, ".{ms:03}Z");
    }

    /// `04/Dec/2026:13:15:05` and, with `millis`, `.123`.
    fn write_clf(&mut self, t: SystemTime, millis: bool, out: &mut Vec<u8>) {
        let ms = self.at(t);
        out.extend_from_slice(self.clf.as_bytes());
        if millis {
            let _ = write!(out, ".{ms:03}");
        }
    }
}

/// Milliseconds with microsecond precision, as `12.345`.
fn write_ms(d: Duration, out: &mut Vec<u8>) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

fn write_opt_ms(d: Option<Duration>, none: &[u8], out: &mut Vec<u8>) {
    match d {
        Some(d) => write_ms(d, out),
        None => out.extend_from_slice(none),
    }
}

/// A template field's text; "-" when the record has none.
fn field(r: &Record, f: Field, clock: &mut Clock, out: &mut Vec<u8>) {
    let text = |t| r.text(t).filter(|s| !s.is_empty()).unwrap_or("-");
    let _ = match f {
        Field::Time => {
            clock.write_rfc3339(r.time, out);
            Ok(())
        }
        Field::Listener => write!(out, "{}", r.log.listener),
        Field::ClientIp => write!(out, "{}", r.client.ip()),
        Field::ClientPort => write!(out, "{}", r.client.port()),
        Field::Method => write!(out, "{}", text(Text::Method)),
        Field::Host => write!(out, "{}", text(Text::Host)),
        Field::Path => write!(out, "{}", text(Text::Path)),
        Field::Protocol => write!(out, "{}", r.protocol.as_str()),
        Field::Status => match r.status {
            Some(s) => write!(out, "{s}"),
            None => write!(out, "-"),
        },
        Field::BytesIn => write!(out, "{}", r.bytes_in),
        Field::BytesOut => write!(out, "{}", r.bytes_out),
        Field::Backend => write!(out, "{}", r.backend.as_deref().unwrap_or("-")),
        Field::Endpoint => match r.endpoint {
            Some(e) => write!(out, "{e}"),
            None => write!(out, "-"),
        },
        Field::Attempts => write!(out, "{}", r.attempts),
        Field::Retries => write!(out, "{}", r.attempts.saturating_sub(1)),
        Field::ConnectMs => {
            write_opt_ms(r.connect, b"-", out);
            Ok(())
        }
        Field::TtfbMs => {
            write_opt_ms(r.first_byte, b"-", out);
            Ok(())
        }
        Field::DurationMs => {
            write_ms(r.duration, out);
            Ok(())
        }
        Field::Termination => write!(out, "{}", r.termination.as_str()),
        Field::TerminationState => write!(out, "{}", r.termination.haproxy()),
        Field::RequestId => write!(out, "{}", text(Text::RequestId)),
        Field::TraceId => write!(out, "{}", text(Text::TraceId)),
        Field::TlsVersion => write!(out, "{}", r.tls_version.unwrap_or("-")),
        Field::TlsSni => write!(out, "{}", text(Text::Sni)),
        Field::UserAgent => write!(out, "{}", text(Text::UserAgent)),
        Field::Referer => write!(out, "{}", text(Text::Referer)),
    };
}

/// A JSON string, escaped.
fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn json_opt_str(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => json_str(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// The JSON line: every field, `null` when the record has none, in the
/// order of [`FIELDS`].
fn json(r: &Record, clock: &mut Clock, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write_rfc3339(r.time, out);
    out.extend_from_slice(b"\",\"listener\":");
    json_str(&r.log.listener, out);
    let _ = write!(
        out,
        ",\"client_ip\":\"{}\",\"client_port\":{},\"method\":",
        r.client.ip(),
        r.client.port()
    );
    json_opt_str(r.text(Text::Method), out);
    out.extend_from_slice(b",\"host\":");
    json_opt_str(r.text(Text::Host), out);
    out.extend_from_slice(b",\"path\":");
    json_opt_str(r.text(Text::Path), out);
    let _ = write!(out, ",\"protocol\":\"{}\",\"status\":", r.protocol.as_str());
    let _ = match r.status {
        Some(s) => write!(out, "{s}"),
        None => write!(out, "null"),
    };
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"backend\":",
        r.bytes_in, r.bytes_out
    );
    json_opt_str(r.backend.as_deref(), out);
    out.extend_from_slice(b",\"endpoint\":");
    let _ = match r.endpoint {
        Some(e) => write!(out, "\"{e}\""),
        None => write!(out, "null"),
    };
    let _ = write!(
        out,
        ",\"attempts\":{},\"retries\":{},\"connect_ms\":",
        r.attempts,
        r.attempts.saturating_sub(1)
    );
    write_opt_ms(r.connect, b"null", out);
    out.extend_from_slice(b",\"ttfb_ms\":");
    write_opt_ms(r.first_byte, b"null", out);
    out.extend_from_slice(b",\"duration_ms\":");
    write_ms(r.duration, out);
    let _ = write!(
        out,
        ",\"termination\":\"{}\",\"termination_state\":\"{}\",\"request_id\":",
        r.termination.as_str(),
        r.termination.haproxy()
    );
    json_opt_str(r.text(Text::RequestId), out);
    out.extend_from_slice(b",\"trace_id\":");
    json_opt_str(r.text(Text::TraceId), out);
    out.extend_from_slice(b",\"tls_version\":");
    json_opt_str(r.tls_version, out);
    out.extend_from_slice(b",\"tls_sni\":");
    json_opt_str(r.text(Text::Sni), out);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt_str(r.text(Text::UserAgent), out);
    out.extend_from_slice(b",\"referer\":");
    json_opt_str(r.text(Text::Referer), out);
    out.push(b'}');
}

/// `"GET /path HTTP/1.1"`'s inside; `-` for TCP.
fn request_line(r: &Record, out: &mut Vec<u8>) {
    match (r.protocol, r.text(Text::Method), r.text(Text::Path)) {
        (Protocol::Tcp, _, _) | (_, None, _) => out.push(b'-'),
        (p, Some(m), path) => {
            let _ = write!(out, "{m} {} {}", path.unwrap_or("-"), p.as_str());
        }
    }
}

fn haproxy(r: &Record, clock: &mut Clock, out: &mut Vec<u8>) {
    let ms_or_minus = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
    let connect = match (r.connect, r.endpoint) {
        (Some(d), _) => d.as_millis() as i64,
        // A reused connection took no time to connect.
        (None, Some(_)) if r.first_byte.is_some() || r.protocol == Protocol::Tcp => 0,
        _ => -1,
    };
    let _ = write!(out, "{}:{} [", r.client.ip(), r.client.port());
    clock.write_clf(r.time, true, out);
    let _ = write!(
        out,
        "] {} {}/",
        r.log.listener,
        r.backend.as_deref().unwrap_or("-")
    );
    let _ = match r.endpoint {
        Some(e) => write!(out, "{e}"),
        None => write!(out, "<NOSRV>"),
    };
    let _ = write!(
        out,
        " {connect}/{}/{} ",
        ms_or_minus(r.first_byte),
        r.duration.as_millis()
    );
    let _ = match r.status {
        Some(s) => write!(out, "{s}"),
        None => write!(out, "-"),
    };
    let _ = write!(
        out,
        " {} {} {} {} \"",
        r.bytes_out,
        r.termination.haproxy(),
        r.attempts.saturating_sub(1),
        r.text(Text::RequestId)
            .filter(|s| !s.is_empty())
            .unwrap_or("-"),
    );
    request_line(r, out);
    out.push(b'"');
}

fn combined(r: &Record, clock: &mut Clock, out: &mut Vec<u8>) {
    let quoted = |t| r.text(t).filter(|s| !s.is_empty()).unwrap_or("-");
    let _ = write!(out, "{} - - [", r.client.ip());
    clock.write_clf(r.time, false, out);
    out.extend_from_slice(b" +0000] \"");
    request_line(r, out);
    out.extend_from_slice(b"\" ");
    let _ = match r.status {
        Some(s) => write!(out, "{s}"),
        None => write!(out, "-"),
    };
    let _ = write!(
        out,
        " {} \"{}\" \"{}\"",
        r.bytes_out,
        quoted(Text::Referer),
        quoted(Text::UserAgent),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::record::{Termination, Texts};
    use crate::access_log::{AccessLog, Only, Sink};
    use std::sync::Arc;

    fn record() -> Record {
        let log = Arc::new(AccessLog::for_tests("web", Format::Json, Sink::Stdout));
        let mut r = Record::new(log, "10.0.0.7:5555".parse().unwrap(), Protocol::Http11);
        r.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_390_105_123);
        let mut t = Texts::default();
        t.push(Text::Method, "GET");
        t.push(Text::Host, "example.com");
        t.push(Text::Path, "/a?b=1");
        t.push(Text::RequestId, "req-1");
        t.push(Text::UserAgent, "curl/8");
        r.texts = t;
        r.status = Some(200);
        r.bytes_out = 12;
        r.backend = Some("app".into());
        r.endpoint = Some("127.0.0.1:8080".parse().unwrap());
        r.attempts = 1;
        r.first_byte = Some(Duration::from_micros(1500));
        r.duration = Duration::from_micros(2250);
        r
    }

    fn line(format: &Format, r: &Record) -> String {
        let mut out = Vec::new();
        format.write(r, &mut Clock::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_carry_every_field() {
        let v: serde_json::Value = serde_json::from_str(&line(&Format::Json, &record())).unwrap();
        assert_eq!(v["time"], "2026-12-04T13:15:05.123Z");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["client_ip"], "10.0.0.7");
        assert_eq!(v["client_port"], 5555);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?b=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["endpoint"], "127.0.0.1:8080");
        assert_eq!(v["ttfb_ms"], 1.5);
        assert_eq!(v["duration_ms"], 2.25);
        assert_eq!(v["retries"], 0);
        assert_eq!(v["termination"], "ok");
        assert_eq!(v["trace_id"], serde_json::Value::Null);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut r = record();
        let mut t = Texts::default();
        t.push(Text::Method, "GET");
        t.push(Text::Path, "/a\\b");
        r.texts = t;
        let v: serde_json::Value = serde_json::from_str(&line(&Format::Json, &r)).unwrap();
        assert_eq!(v["path"], "/a\\b");
    }

    #[test]
    fn haproxy_and_combined_lines_look_like_theirs() {
        let r = record();
        assert_eq!(
            line(&Format::Haproxy, &r),
            "10.0.0.7:5555 [04/Dec/2026:13:15:05.123] web app/127.0.0.1:8080 0/1/2 200 12 -- 0 req-1 \"GET /a?b=1 HTTP/1.1\"\n"
        );
        assert_eq!(
            line(&Format::Combined, &r),
            "10.0.0.7 - - [04/Dec/2026:13:15:05 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn templates_name_fields_and_escape_percent() {
        let f = Format::parse("%status %duration_ms%% %termination_state/%termination").unwrap();
        let mut r = record();
        r.termination = Termination::ClientClosed;
        assert_eq!(line(&f, &r), "200 2.250% CD/client_closed\n");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert!(matches!(
            Format::parse("%nope"),
            Err(FormatError::UnknownField(f)) if f == "nope"
        ));
        assert_eq!(Format::parse("100%"), Err(FormatError::Dangling));
        assert_eq!(Format::parse("plain text"), Err(FormatError::NoField));
        let _ = Only::All;
    }
}
