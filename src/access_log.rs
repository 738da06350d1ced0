//! The access log: one JSON line per request, to stderr or a file.
//!
//! Lines are handed to a writer thread over a bounded queue, so a slow disk never holds up a
//! request; when the queue is full (in lines or in bytes) the line is dropped and counted. Forwarded requests are
//! always logged; rejections are sampled under `rejections_per_second`, so an attack cannot
//! flood the disk. Never a key: the path is logged without its query string.
//!
//! A file is opened again on `SIGHUP` (after `logrotate` has moved it away), so lines go to a
//! file at the configured path again.

use crate::config::AccessLogConfig;
use crate::metrics::Outcome;
use governor::{DefaultDirectRateLimiter, Quota};
use prometheus::IntCounter;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer; past this a burst is dropped rather than queued.
const QUEUE: usize = 16_384;
/// Bytes waiting for the writer, at most: a line holds a client's path, which may be as long
/// as a request head (1 MiB in Pingora), so the count of lines alone would let a stalled disk
/// hold gigabytes. 8 MiB is 30,000 lines of a usual length: the line bound comes first then.
const QUEUE_BYTES: usize = 8 << 20;
/// How often the writer flushes while lines keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// One finished request.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// The path only: the query string may hold a key.
    pub path: &'a str,
    pub status: u16,
    pub outcome: Outcome,
    pub app: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub duration: Duration,
}

pub struct AccessLog {
    lines: SyncSender<String>,
    /// The bytes of the lines queued now (their allocations), kept under `QUEUE_BYTES`.
    queued: Arc<AtomicUsize>,
    /// Asks the writer to open its file again, before its next line.
    reopen: Arc<AtomicBool>,
    rejections: DefaultDirectRateLimiter,
    /// Lines not written: sampled out, or dropped on a full queue
    /// (`keygate_access_log_skipped_total`).
    skipped: IntCounter,
}

impl AccessLog {
    /// Opens the log and starts its writer thread; lines not written are counted in `skipped`.
    pub fn open(config: &AccessLogConfig, skipped: IntCounter) -> std::io::Result<AccessLog> {
        let sink = Sink::open(config.path.clone())?;
        let (lines, queue) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let (asked, written) = (Arc::clone(&reopen), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("keygate-access-log".into())
            .spawn(move || write_lines(queue, sink, &asked, &written))?;
        let per_second = NonZeroU32::new(config.rejections_per_second).unwrap_or(NonZeroU32::MIN);
        Ok(AccessLog {
            lines,
            queued,
            reopen,
            rejections: DefaultDirectRateLimiter::direct(Quota::per_second(per_second)),
            skipped,
        })
    }

    /// Opens the file again before the next line (a reload, after log rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn record(&self, entry: &Entry<'_>) {
        if entry.outcome != Outcome::Forwarded && self.rejections.check().is_err() {
            self.skipped.inc();
            return;
        }
        let line = format_line(entry, SystemTime::now());
        let bytes = line.capacity();
        if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.skipped.inc();
            return;
        }
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(bytes, Ordering::Relaxed);
                self.skipped.inc();
            }
        }
    }
}

/// Where lines go: stderr, or a file that can be opened again.
struct Sink {
    path: Option<PathBuf>,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
}

impl Sink {
    fn open(path: Option<PathBuf>) -> std::io::Result<Sink> {
        let out: Box<dyn Write + Send> = match path.as_deref() {
            None => Box::new(std::io::stderr()),
            Some(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        Ok(Sink { path, out: std::io::BufWriter::new(out) })
    }

    /// Flushes to the file now open, then opens the path again; on failure, keeps the old file.
    fn reopen(&mut self) {
        let _ = self.out.flush();
        if self.path.is_none() {
            return;
        }
        match Sink::open(self.path.clone()) {
            Ok(fresh) => *self = fresh,
            Err(e) => log::error!("access log not reopened, still writing the old file: {e}"),
        }
    }
}

fn write_lines(queue: Receiver<String>, mut sink: Sink, reopen: &AtomicBool, queued: &AtomicUsize) {
    loop {
        let next = queue.recv_timeout(FLUSH_EVERY);
        if reopen.swap(false, Ordering::Relaxed) {
            sink.reopen();
        }
        let out = &mut sink.out;
        match next {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                queued.fetch_sub(line.capacity(), Ordering::Relaxed);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

/// The JSON line for `entry`, newline included.
pub fn format_line(entry: &Entry<'_>, at: SystemTime) -> String {
    let mut line = String::with_capacity(256);
    line.push_str("{\"time\":\"");
    push_time(&mut line, at);
    line.push_str("\",\"client\":");
    push_address(&mut line, entry.client);
    line.push_str(",\"method\":");
    push_string(&mut line, entry.method);
    line.push_str(",\"path\":");
    push_string(&mut line, entry.path);
    let _ = write!(line, ",\"status\":{},\"outcome\":\"{}\",\"app\":", entry.status, entry.outcome.as_str());
    push_optional(&mut line, entry.app);
    line.push_str(",\"upstream\":");
    push_address(&mut line, entry.upstream);
    let _ = writeln!(line, ",\"duration_ms\":{:.3}}}", entry.duration.as_secs_f64() * 1000.0);
    line
}

fn push_optional(line: &mut String, value: Option<&str>) {
    match value {
        Some(value) => push_string(line, value),
        None => line.push_str("null"),
    }
}

/// An address, written straight into the line: its text needs no escaping, and no `String` of
/// its own.
fn push_address(line: &mut String, address: Option<impl std::fmt::Display>) {
    match address {
        Some(address) => {
            let _ = write!(line, "\"{address}\"");
        }
        None => line.push_str("null"),
    }
}

fn push_string(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// RFC 3339 UTC with milliseconds (truncated), e.g. `2025-11-26T05:06:31.123Z`.
fn push_time(line: &mut String, at: SystemTime) {
    let at = jiff::Timestamp::try_from(at.max(UNIX_EPOCH)).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let _ = write!(line, "{at:.3}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let entry = Entry {
            client: Some("203.0.113.7".parse().unwrap()),
            method: "POST",
            path: "/ingest/\"odd\"",
            status: 200,
            outcome: Outcome::Forwarded,
            app: Some("acme"),
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            duration: Duration::from_micros(1500),
        };
        let at = UNIX_EPOCH + Duration::from_millis(1_764_133_591_123);
        assert_eq!(
            format_line(&entry, at),
            "{\"time\":\"2025-11-26T05:06:31.123Z\",\"client\":\"203.0.113.7\",\"method\":\"POST\",\
             \"path\":\"/ingest/\\\"odd\\\"\",\"status\":200,\"outcome\":\"forwarded\",\"app\":\"acme\",\
             \"upstream\":\"127.0.0.1:8080\",\"duration_ms\":1.500}\n"
        );
    }

    #[test]
    fn dates_are_right_across_leap_years() {
        let mut line = String::new();
        push_time(&mut line, UNIX_EPOCH + Duration::from_secs(951_782_400)); // 2000-02-29
        assert_eq!(line, "2000-02-29T00:00:00.000Z");
    }
}
