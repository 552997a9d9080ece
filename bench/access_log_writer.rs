//! The access log writer's ceiling: how many JSON lines a second the one
//! writer thread formats and writes to a file when producers outpace it.
//!
//! `cargo bench --bench access_log_writer`. Two producer threads submit
//! records as fast as they can for a few seconds (far faster than any
//! proxy answers requests); the queue stays full, so what the writer
//! wrote per second is its ceiling, and the rest is dropped and counted,
//! as in production. Prints a Markdown table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use switchyard::access_log::{
    AccessLog, AccessLogCounters, AccessLogSpec, Format, Only, Protocol, Sink, Text, Texts,
};

const SECONDS: u64 = 3;

fn counter(name: &str) -> IntCounter {
    IntCounter::new(name, name).expect("a valid metric name")
}

fn record(log: &Arc<AccessLog>) -> Box<switchyard::access_log::Record> {
    let mut r = log.record("10.1.2.3:45678".parse().expect("addr"), Protocol::Http11);
    let mut t = Texts::with_capacity(160);
    t.push(Text::Method, "GET");
    t.push(Text::Host, "api.example.com");
    t.push(Text::Path, "/v1/users/12345?expand=orders");
    t.push(Text::RequestId, "0f8c2b6e-3a1d-4c9e-9b7a-2d4e6f8a0b1c");
    t.push(Text::UserAgent, "Mozilla/5.0 (X11; Linux x86_64)");
    r.texts = t;
    r.status = Some(200);
    r.bytes_out = 1234;
    r.backend = Some("api".into());
    r.endpoint = Some("10.0.0.9:8080".parse().expect("addr"));
    r.attempts = 1;
    r.first_byte = Some(Duration::from_micros(850));
    r.duration = Duration::from_micros(910);
    r
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    for (name, format) in [
        ("json", Format::Json),
        ("haproxy", Format::Haproxy),
        ("combined", Format::Combined),
    ] {
        let path = dir.path().join(format!("{name}.log"));
        let counters = AccessLogCounters {
            lines: counter("lines"),
            dropped_queue_full: counter("queue_full"),
            dropped_write_error: counter("write_error"),
        };
        let log = Arc::new(AccessLog::new(
            "bench".into(),
            AccessLogSpec {
                format,
                sink: Sink::File(path.clone()),
                sample: 1.0,
                only: Only::All,
            },
            counters.clone(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (log, stop) = (log.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        AccessLog::submit(record(&log));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(SECONDS));
        stop.store(true, Ordering::Relaxed);
        let submitted: u64 = producers.into_iter().map(|p| p.join().unwrap_or(0)).sum();
        switchyard::access_log::flush(Duration::from_secs(10));
        let elapsed = started.elapsed().as_secs_f64();
        let written = counters.lines.get();
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        rows.push(format!(
            "| {name} | {:.0} | {:.0} | {} | {:.0} |",
            written as f64 / elapsed,
            submitted as f64 / elapsed,
            counters.dropped_queue_full.get(),
            bytes as f64 / written.max(1) as f64,
        ));
    }
    println!("# Access log writer ceiling\n");
    println!(
        "Two producer threads submit records for {SECONDS} s each format; one writer thread writes to a file.\n"
    );
    println!(
        "| format | lines/s written | lines/s submitted | dropped (queue full) | bytes/line |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}
