//! Access log line formats: JSON, HAProxy's, Apache/nginx "combined", and
//! templates of `%field`s. Runs on the writer thread, never on the data path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

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

    /// Appends `record`'s line, newline included, to `out`.
    pub fn write(&self, record: &Record, out: &mut Vec<u8>) {
        match self {
            Self::Json => {
                // Serializing borrowed fields into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &JsonLine::of(record));
            }
            Self::Haproxy => haproxy(record, out),
            Self::Combined => combined(record, out),
            Self::Template(pieces) => {
                let mut line = String::with_capacity(256);
                for piece in pieces {
                    match piece {
                        Piece::Literal(s) => line.push_str(s),
                        Piece::Field(f) => field(record, *f, &mut line),
                    }
                }
                out.extend_from_slice(line.as_bytes());
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

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// A template field's text; "-" when the record has none.
fn field(r: &Record, f: Field, line: &mut String) {
    let text = |t| r.text(t).filter(|s| !s.is_empty());
    let _ = match f {
        Field::Time => write!(line, "{}", rfc3339(r.time)),
        Field::Listener => write!(line, "{}", r.log.listener),
        Field::ClientIp => write!(line, "{}", r.client.ip()),
        Field::ClientPort => write!(line, "{}", r.client.port()),
        Field::Method => write!(line, "{}", text(Text::Method).unwrap_or("-")),
        Field::Host => write!(line, "{}", text(Text::Host).unwrap_or("-")),
        Field::Path => write!(line, "{}", text(Text::Path).unwrap_or("-")),
        Field::Protocol => write!(line, "{}", r.protocol.as_str()),
        Field::Status => match r.status {
            Some(s) => write!(line, "{s}"),
            None => write!(line, "-"),
        },
        Field::BytesIn => write!(line, "{}", r.bytes_in),
        Field::BytesOut => write!(line, "{}", r.bytes_out),
        Field::Backend => write!(line, "{}", r.backend.as_deref().unwrap_or("-")),
        Field::Endpoint => match r.endpoint {
            Some(e) => write!(line, "{e}"),
            None => write!(line, "-"),
        },
        Field::Attempts => write!(line, "{}", r.attempts),
        Field::Retries => write!(line, "{}", r.attempts.saturating_sub(1)),
        Field::ConnectMs => match r.connect {
            Some(d) => write!(line, "{:.3}", millis(d)),
            None => write!(line, "-"),
        },
        Field::TtfbMs => match r.first_byte {
            Some(d) => write!(line, "{:.3}", millis(d)),
            None => write!(line, "-"),
        },
        Field::DurationMs => write!(line, "{:.3}", millis(r.duration)),
        Field::Termination => write!(line, "{}", r.termination.as_str()),
        Field::TerminationState => write!(line, "{}", r.termination.haproxy()),
        Field::RequestId => write!(line, "{}", text(Text::RequestId).unwrap_or("-")),
        Field::TraceId => write!(line, "{}", text(Text::TraceId).unwrap_or("-")),
        Field::TlsVersion => write!(line, "{}", r.tls_version.unwrap_or("-")),
        Field::TlsSni => write!(line, "{}", text(Text::Sni).unwrap_or("-")),
        Field::UserAgent => write!(line, "{}", text(Text::UserAgent).unwrap_or("-")),
        Field::Referer => write!(line, "{}", text(Text::Referer).unwrap_or("-")),
    };
}

/// The JSON line: every field, `null` when the record has none.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    listener: &'a str,
    client_ip: String,
    client_port: u16,
    method: Option<&'a str>,
    host: Option<&'a str>,
    path: Option<&'a str>,
    protocol: &'static str,
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    backend: Option<&'a str>,
    endpoint: Option<String>,
    attempts: u32,
    retries: u32,
    connect_ms: Option<f64>,
    ttfb_ms: Option<f64>,
    duration_ms: f64,
    termination: &'static str,
    termination_state: &'static str,
    request_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    tls_version: Option<&'static str>,
    tls_sni: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

impl<'a> JsonLine<'a> {
    fn of(r: &'a Record) -> Self {
        Self {
            time: rfc3339(r.time),
            listener: &r.log.listener,
            client_ip: r.client.ip().to_string(),
            client_port: r.client.port(),
            method: r.text(Text::Method),
            host: r.text(Text::Host),
            path: r.text(Text::Path),
            protocol: r.protocol.as_str(),
            status: r.status,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            backend: r.backend.as_deref(),
            endpoint: r.endpoint.map(|e| e.to_string()),
            attempts: r.attempts,
            retries: r.attempts.saturating_sub(1),
            connect_ms: r.connect.map(millis),
            ttfb_ms: r.first_byte.map(millis),
            duration_ms: millis(r.duration),
            termination: r.termination.as_str(),
            termination_state: r.termination.haproxy(),
            request_id: r.text(Text::RequestId),
            trace_id: r.text(Text::TraceId),
            tls_version: r.tls_version,
            tls_sni: r.text(Text::Sni),
            user_agent: r.text(Text::UserAgent),
            referer: r.text(Text::Referer),
        }
    }
}

/// `2026-12-04T13:15:05.123Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `04/Dec/2026:13:15:05` and `.123`, in UTC, from the RFC 3339 form.
fn clf_time(t: SystemTime) -> (String, String) {
    let s = rfc3339(t);
    // "YYYY-MM-DDTHH:MM:SS.mmmZ": fixed positions.
    let (Some(year), Some(month), Some(day), Some(clock), Some(ms)) = (
        s.get(0..4),
        s.get(5..7).and_then(|m| m.parse::<usize>().ok()),
        s.get(8..10),
        s.get(11..19),
        s.get(19..23),
    ) else {
        return (s, String::new());
    };
    let month = MONTHS.get(month.wrapping_sub(1)).copied().unwrap_or("???");
    (format!("{day}/{month}/{year}:{clock}"), ms.to_string())
}

/// `"GET /path HTTP/1.1"`'s inside; `-` for TCP.
fn request_line(r: &Record) -> String {
    match (r.protocol, r.text(Text::Method), r.text(Text::Path)) {
        (Protocol::Tcp, _, _) | (_, None, _) => "-".to_string(),
        (p, Some(m), path) => format!("{m} {} {}", path.unwrap_or("-"), p.as_str()),
    }
}

fn haproxy(r: &Record, out: &mut Vec<u8>) {
    let (date, ms) = clf_time(r.time);
    let ms_or_minus = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
    let connect = match (r.connect, r.endpoint) {
        (Some(d), _) => d.as_millis() as i64,
        // A reused connection took no time to connect.
        (None, Some(_)) if r.first_byte.is_some() || r.protocol == Protocol::Tcp => 0,
        _ => -1,
    };
    let _ = write!(
        out,
        "{}:{} [{date}{ms}] {} {}/{} {connect}/{}/{} {} {} {} {} {} \"{}\"",
        r.client.ip(),
        r.client.port(),
        r.log.listener,
        r.backend.as_deref().unwrap_or("-"),
        r.endpoint
            .map_or_else(|| "<NOSRV>".to_string(), |e| e.to_string()),
        ms_or_minus(r.first_byte),
        r.duration.as_millis(),
        r.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
        r.bytes_out,
        r.termination.haproxy(),
        r.attempts.saturating_sub(1),
        r.text(Text::RequestId)
            .filter(|s| !s.is_empty())
            .unwrap_or("-"),
        request_line(r),
    );
}

fn combined(r: &Record, out: &mut Vec<u8>) {
    let (date, _) = clf_time(r.time);
    let quoted = |t| r.text(t).filter(|s| !s.is_empty()).unwrap_or("-");
    let _ = write!(
        out,
        "{} - - [{date} +0000] \"{}\" {} {} \"{}\" \"{}\"",
        r.client.ip(),
        request_line(r),
        r.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
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
        format.write(r, &mut out);
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
