//! A deadline for reading request headers (slowloris).
//!
//! Pingora reads request headers with a timeout per read and no overall deadline (its issue
//! #447): a client sending one byte just inside each timeout holds a connection for as long as
//! it likes. keygate wraps every accepted connection in a [`DeadlineStream`] whose reads fail
//! once `header_timeout` has passed without the end of the headers (a blank line, see
//! [`HeadEnd`]) having arrived. The deadline is armed when a connection opens and again after each response, so a
//! keep-alive connection gets one deadline per request; request bodies are not under it (a
//! slow upload is legitimate, and read timeouts cover it).
//!
//! The deadline is checked when a read is attempted, not by a timer: a client that trickles
//! bytes is cut at its next read past the deadline. So the hot path costs a clock read per
//! read, no timer-wheel work.
//!
//! A new connection is handed to Pingora only once its first request's headers have arrived
//! whole (or closed when they do not within `header_timeout`: one timer per connection, none
//! per request). When a stop or upgrade begins, Pingora drops every connection still waiting
//! for its request, even one accepted a moment before whose headers were on their way, or half
//! in. Reading them here, where no stop interrupts, closes that window: Pingora then finds the
//! headers already read (kept in [`DeadlineStream`] and given back to its first reads), and a
//! request it can read at once is always answered. Bytes that cannot begin a request go to
//! Pingora at once, to be refused there. A keep-alive connection's later requests are Pingora's
//! own to read; a stopping gateway closes those connections after each response.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Bytes of a first request read ahead at most. Past this Pingora reads the rest of the headers
/// itself (up to its own limit, 1 MiB), under the same deadline but without the protection
/// against a stop.
const READ_AHEAD_LIMIT: usize = 64 * 1024;

/// A server app whose connections have a header deadline.
pub struct WithHeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> WithHeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        WithHeaderDeadline { inner: Arc::new(inner), timeout }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for WithHeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut stream = DeadlineStream::new(stream, self.timeout);
        let headers = tokio::time::timeout(self.timeout, stream.read_first_headers()).await;
        if !matches!(headers, Ok(Ok(true))) {
            return None;
        }
        self.inner.process_new(Box::new(stream), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A connection whose header reads have a deadline.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    /// Armed while headers are being read; `None` once they are complete.
    deadline: Option<Instant>,
    /// Where the headers being read end.
    head_end: HeadEnd,
    /// A response was written: the next read starts the next request's headers.
    rearm: bool,
    /// Bytes read ahead (the first request's headers), given back to the next reads first.
    read_ahead: Vec<u8>,
    /// How much of `read_ahead` has been given back.
    given_back: usize,
    /// Whether `read_ahead` was scanned for the end of the headers under the current deadline
    /// (it was, when read); bytes given back after a response armed a new one are scanned then.
    read_ahead_scanned: bool,
}

impl DeadlineStream {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        let mut stream = DeadlineStream {
            inner,
            timeout,
            deadline: None,
            head_end: HeadEnd::default(),
            rearm: false,
            read_ahead: Vec::new(),
            given_back: 0,
            read_ahead_scanned: false,
        };
        stream.arm();
        stream
    }

    /// Reads until the first request's headers are complete, keeping what was read for the next
    /// reads. Stops early, to let Pingora deal with it at once, on what cannot be a request (see
    /// [`Shape`]), past `READ_AHEAD_LIMIT`, or when the client stops sending. False if it sent
    /// nothing at all.
    async fn read_first_headers(&mut self) -> std::io::Result<bool> {
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut shape = Shape::Blank;
        while self.deadline.is_some() && read.len() < READ_AHEAD_LIMIT {
            let n = self.read(&mut chunk).await?;
            read.extend_from_slice(&chunk[..n]);
            shape = shape.after(&chunk[..n]);
            if n == 0 || shape == Shape::NotARequest {
                break;
            }
        }
        let sent = !read.is_empty();
        self.read_ahead = read;
        self.read_ahead_scanned = true;
        Ok(sent)
    }

    /// Puts what is left of the read-ahead bytes into `buf`; false when none are left.
    fn give_back(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let left = &self.read_ahead[self.given_back..];
        if left.is_empty() {
            return false;
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.given_back += n;
        if self.given_back == self.read_ahead.len() {
            self.read_ahead = Vec::new();
            self.given_back = 0;
        }
        true
    }

    fn arm(&mut self) {
        self.deadline = Some(Instant::now() + self.timeout);
        self.head_end = HeadEnd::default();
        self.rearm = false;
        self.read_ahead_scanned = false;
    }
}

/// Finds where a request's headers end, across reads: at a blank line, CRLF CRLF or bare LFs
/// (which Pingora's parser, httparse, accepts too), not counting blank lines before the request
/// line (which it skips). It looks at each LF (memchr: a byte-by-byte scan ran at 2% of the
/// proxy's CPU), a dozen or so per request.
#[derive(Debug, Default, Clone, Copy)]
struct HeadEnd {
    /// A byte other than CR and LF has come: blank lines before it are no end.
    started: bool,
    /// The last two bytes scanned, for an end split across reads.
    tail: [u8; 2],
}

impl HeadEnd {
    fn found_in(&mut self, bytes: &[u8]) -> bool {
        let bytes = match self.started {
            true => bytes,
            false => match bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                None => return false,
                Some(first) => {
                    self.started = true;
                    &bytes[first..]
                }
            },
        };
        // An LF followed by an LF, or by CR LF.
        let end_in = |window: &[u8]| {
            memchr::memchr_iter(b'\n', window)
                .any(|lf| matches!(&window[lf + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
        };
        // An end split across reads lies within the tail and the first two new bytes.
        let head = bytes.len().min(2);
        let mut joint = [0u8; 4];
        joint[..2].copy_from_slice(&self.tail);
        joint[2..2 + head].copy_from_slice(&bytes[..head]);
        if end_in(&joint[..2 + head]) || end_in(bytes) {
            return true;
        }
        let last_two = match bytes.len() {
            0..2 => &joint[head..head + 2],
            n => &bytes[n - 2..],
        };
        self.tail.copy_from_slice(last_two);
        false
    }
}

/// What the first bytes of a connection can still be (RFC 9112): blank lines, then a method (a
/// token) and a space, then the rest of the head, with no control byte but tab, CR and LF.
/// Anything else is no request, however much more comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Blank,
    Method,
    Rest,
    NotARequest,
}

impl Shape {
    fn after(mut self, bytes: &[u8]) -> Shape {
        let control = |b: u8| (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for &byte in bytes {
            self = match (self, byte) {
                (Shape::NotARequest, _) => return Shape::NotARequest,
                (_, b) if control(b) => Shape::NotARequest,
                (Shape::Blank, b'\r' | b'\n') => Shape::Blank,
                (Shape::Blank | Shape::Method, b) if token(b) => Shape::Method,
                (Shape::Method, b' ') | (Shape::Rest, _) => Shape::Rest,
                _ => Shape::NotARequest,
            };
        }
        self
    }
}

/// Whether a write starts a final response (not a `100 Continue`), after which the connection
/// waits for the next request. Known gap: an upstream that answers before the request body has
/// been read whole (an early 413, say) re-arms the deadline while body reads remain; they then
/// fall under `header_timeout_ms`. Telling the body's end apart needs the HTTP framing, which
/// this layer does not parse.
fn starts_final_response(buf: &[u8]) -> bool {
    buf.starts_with(b"HTTP/1.") && buf.len() > 9 && buf[9] != b'1'
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.rearm {
            this.arm();
        }
        let before = buf.filled().len();
        let read = match this.give_back(buf) {
            true if this.read_ahead_scanned => return Poll::Ready(Ok(())),
            true => Poll::Ready(Ok(())),
            false if this.deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request headers not complete within header_timeout_ms",
                )));
            }
            false => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = read {
            if this.deadline.is_some() && this.head_end.found_in(&buf.filled()[before..]) {
                this.deadline = None;
            }
        }
        read
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(_))) && starts_final_response(buf) {
            this.rearm = true;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === delegation of Pingora's stream traits ===

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    /// A peek fills `buf` whole (as Pingora's own streams do) or says it cannot (`false`): from
    /// the read-ahead bytes while there are any, else from the socket. keygate's listeners (no
    /// TLS, no h2c) never peek after the read-ahead.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let left = &self.read_ahead[self.given_back..];
        match left.len() {
            0 => self.inner.try_peek(buf).await,
            n if n >= buf.len() => {
                buf.copy_from_slice(&left[..buf.len()]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_headers_is_found_across_reads() {
        let mut end = HeadEnd::default();
        assert!(!end.found_in(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(end.found_in(b"\n\r\nbody"));
        let mut end = HeadEnd::default();
        assert!(!end.found_in(b"GET / HTTP/1.1\r\n"));
        assert!(!end.found_in(b"X: y\r\n"));
        assert!(end.found_in(b"\r\n"));
        // Bare LFs end headers too, as Pingora's parser reads them.
        assert!(HeadEnd::default().found_in(b"GET / HTTP/1.0\n\n"));
        assert!(HeadEnd::default().found_in(b"GET / HTTP/1.0\nX: y\n\r\n"));
    }

    #[test]
    fn blank_lines_before_the_request_line_end_nothing() {
        let mut end = HeadEnd::default();
        assert!(!end.found_in(b"\r\n\r\n\n\n"));
        assert!(!end.found_in(b"\r\nGET / HTTP/1.1\r\n"));
        assert!(end.found_in(b"\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn reads_split_anywhere_find_the_end_where_one_read_would(
            bytes in proptest::collection::vec(proptest::sample::select(b"\r\nab".to_vec()), 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..4),
        ) {
            let start = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n'));
            let whole = start.is_some_and(|first| {
                let head = &bytes[first..];
                head.windows(2).any(|w| w == b"\n\n") || head.windows(3).any(|w| w == b"\n\r\n")
            });
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let (mut end, mut found, mut from) = (HeadEnd::default(), false, 0);
            for to in cuts.into_iter().chain([bytes.len()]) {
                found |= end.found_in(&bytes[from..to]);
                from = to;
            }
            proptest::prop_assert_eq!(found, whole);
        }
    }

    #[test]
    fn what_cannot_begin_a_request_is_told_apart_early() {
        let shape = |bytes: &[u8]| Shape::Blank.after(bytes);
        assert_eq!(shape(b"POST /ingest HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n"), Shape::Rest);
        assert_eq!(shape(b"GET /caf\xc3\xa9 HTTP/1.1"), Shape::Rest, "Pingora escapes such a target");
        assert_eq!(shape(b"\r\nGE"), Shape::Method);
        assert_eq!(Shape::Method.after(b"T / H"), Shape::Rest);
        assert_eq!(shape(b"\xde\xdb\x80*pD"), Shape::NotARequest);
        assert_eq!(shape(b"*pD\xd0?;"), Shape::NotARequest, "no method holds a byte beyond ASCII");
        assert_eq!(shape(b"GET /\x00 HTTP/1.1"), Shape::NotARequest);
        assert_eq!(shape(b"GET / HTTP/1.1\r\nX: \x7f"), Shape::NotARequest);
    }

    #[test]
    fn only_a_final_response_rearms() {
        assert!(starts_final_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_final_response(b"HTTP/1.1 403 Forbidden\r\n"));
        assert!(!starts_final_response(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!starts_final_response(b"{\"body\":1}"));
    }
}
