//! A deadline for reading request headers (slowloris).
//!
//! Pingora reads request headers with a timeout per read and no overall deadline (its issue
//! #447): a client sending one byte just inside each timeout holds a connection for as long as
//! it likes. keygate wraps every accepted connection in a [`DeadlineStream`] whose reads fail
//! once `header_timeout` has passed without the end of the headers (`\r\n\r\n`) having
//! arrived. The deadline is armed when a connection opens and again after each response, so a
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
//! request it can read at once is always answered. A keep-alive connection's later requests are
//! Pingora's own to read; a stopping gateway closes those connections after each response.

use async_trait::async_trait;
use memchr::memmem;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Bytes of a first request read ahead at most; past this (headers that large are refused
/// anyway) Pingora reads the rest, under the same deadline.
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
    /// The last bytes read, to find `\r\n\r\n` split across reads.
    tail: [u8; 3],
    /// A response was written: the next read starts the next request's headers.
    rearm: bool,
    /// Bytes read ahead (the first request's headers), given back to the next reads first.
    read_ahead: Vec<u8>,
    /// How much of `read_ahead` has been given back.
    given_back: usize,
}

impl DeadlineStream {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        let mut stream = DeadlineStream {
            inner,
            timeout,
            deadline: None,
            tail: [0; 3],
            rearm: false,
            read_ahead: Vec::new(),
            given_back: 0,
        };
        stream.arm();
        stream
    }

    /// Reads until the first request's headers are complete, keeping what was read for the next
    /// reads. Stops early, to let Pingora answer at once, on what cannot be a request (see
    /// [`cannot_be_a_head`]), past `READ_AHEAD_LIMIT`, or when the client stops sending. False if
    /// it sent nothing at all.
    async fn read_first_headers(&mut self) -> std::io::Result<bool> {
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        while self.deadline.is_some() && read.len() < READ_AHEAD_LIMIT {
            let n = self.read(&mut chunk).await?;
            read.extend_from_slice(&chunk[..n]);
            if n == 0 || cannot_be_a_head(&read) {
                break;
            }
        }
        let sent = !read.is_empty();
        self.read_ahead = read;
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
        self.tail = [0; 3];
        self.rearm = false;
    }
}

/// Whether `bytes`, following the three in `tail`, contain the end of the headers; `tail`
/// keeps the last three bytes for the next read. A SIMD search (memchr): the scan ran at 2% of
/// the proxy's CPU when it went byte by byte.
fn headers_end_in(tail: &mut [u8; 3], bytes: &[u8]) -> bool {
    const END: &[u8] = b"\r\n\r\n";
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(END));
    // An end split across reads lies within the tail and the first three new bytes.
    let head = bytes.len().min(3);
    let mut joint = [0u8; 6];
    joint[..3].copy_from_slice(tail);
    joint[3..3 + head].copy_from_slice(&bytes[..head]);
    if FINDER.find(&joint[..3 + head]).is_some() || FINDER.find(bytes).is_some() {
        return true;
    }
    let last_three = match bytes.len() {
        0..3 => &joint[head..head + 3],
        n => &bytes[n - 3..],
    };
    tail.copy_from_slice(last_three);
    false
}

/// Whether `bytes` cannot begin a request head however much more comes (RFC 9112): a control
/// byte other than CR, LF and tab anywhere, or a byte beyond ASCII in the request line.
fn cannot_be_a_head(bytes: &[u8]) -> bool {
    let control = |b: u8| (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f;
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    bytes.iter().any(|&b| control(b)) || first_line.iter().any(|&b| b >= 0x80)
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
        // Bytes read ahead were scanned for the end of the headers when they were read.
        if this.give_back(buf) {
            return Poll::Ready(Ok(()));
        }
        if this.rearm {
            this.arm();
        }
        if this.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request headers not complete within header_timeout_ms",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            if this.deadline.is_some() && headers_end_in(&mut this.tail, &buf.filled()[before..]) {
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
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let left = &self.read_ahead[self.given_back..];
        if !left.is_empty() {
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            return Ok(true);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_headers_is_found_across_reads() {
        let mut tail = [0; 3];
        assert!(!headers_end_in(&mut tail, b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(headers_end_in(&mut tail, b"\n\r\nbody"));
        let mut tail = [0; 3];
        assert!(!headers_end_in(&mut tail, b"GET / HTTP/1.1\r\n"));
        assert!(!headers_end_in(&mut tail, b"X: y\r\n"));
        assert!(headers_end_in(&mut tail, b"\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn reads_split_anywhere_find_the_end_where_one_read_would(
            bytes in proptest::collection::vec(proptest::sample::select(b"\r\nab".to_vec()), 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..4),
        ) {
            let whole = bytes.windows(4).any(|w| w == b"\r\n\r\n");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let (mut tail, mut found, mut from) = ([0; 3], false, 0);
            for to in cuts.into_iter().chain([bytes.len()]) {
                found |= headers_end_in(&mut tail, &bytes[from..to]);
                from = to;
            }
            proptest::prop_assert_eq!(found, whole);
        }
    }

    #[test]
    fn what_cannot_begin_a_request_is_told_apart_early() {
        assert!(!cannot_be_a_head(b"POST /ingest HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n"));
        assert!(!cannot_be_a_head(b"\r\nGET / HTT"));
        assert!(cannot_be_a_head(b"GET /\x00 HTTP/1.1\r\n"));
        assert!(cannot_be_a_head(b"\xde\xdb\x80*pD"));
        assert!(cannot_be_a_head(b"GET / HTTP/1.1\r\nX: \x7f"));
    }

    #[test]
    fn only_a_final_response_rearms() {
        assert!(starts_final_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_final_response(b"HTTP/1.1 403 Forbidden\r\n"));
        assert!(!starts_final_response(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!starts_final_response(b"{\"body\":1}"));
    }
}
