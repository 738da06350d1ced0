//! A deadline for reading request headers (slowloris).
//!
//! Pingora reads request headers with a timeout per read and no overall deadline (its issue
//! #447): a client sending one byte just inside each timeout holds a connection for as long as
//! it likes. keygate wraps every accepted connection in a [`DeadlineStream`] whose reads fail
//! once `header_timeout` has passed without the end of the headers (a blank line, see
//! [`HeadEnd`]) having arrived. The deadline is armed when a connection opens and again after
//! each response, so a keep-alive connection gets one deadline per request; request bodies are
//! not under it (a slow upload is legitimate, and read timeouts cover it).
//!
//! The deadline is checked when a read is attempted, not by a timer: a client that trickles
//! bytes is cut at its next read past the deadline. So the hot path registers no timer at all:
//! a keep-alive request costs one clock read to arm its deadline (the read that follows the
//! response, which usually finds nothing yet) and one when its bytes arrive; reads of a body,
//! with no deadline armed, read no clock.

use pingora::protocols::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose header reads have a deadline.
#[derive(Debug)]
pub(super) struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    /// Armed while headers are being read; `None` once they are complete.
    deadline: Option<Instant>,
    /// Where the headers being read end.
    head_end: HeadEnd,
    /// A response was written: the next read starts the next request's headers.
    rearm: bool,
    /// A response has been written since the connection opened: the headers being read are a
    /// later request's than the first (whose bytes may have been read ahead, see
    /// [`DeadlineStream::seen_again`]).
    past_first_request: bool,
}

impl DeadlineStream {
    pub(super) fn new(inner: Stream, timeout: Duration) -> Self {
        DeadlineStream {
            inner,
            timeout,
            deadline: Some(Instant::now() + timeout),
            head_end: HeadEnd::default(),
            rearm: false,
            past_first_request: false,
        }
    }

    /// Whether the current request's headers are still being read, under the deadline.
    pub(super) fn reading_headers(&self) -> bool {
        self.deadline.is_some()
    }

    /// Bytes read through this stream while the first request's headers were read, now handed on
    /// again by the layer above (the read-ahead): they were scanned for the end of the headers
    /// then. Handed on after a response armed a new deadline, they are the next request's, and
    /// scanned for its end now.
    pub(super) fn seen_again(&mut self, bytes: &[u8]) {
        self.arm_after_response();
        if self.past_first_request {
            self.scan(bytes);
        }
    }

    /// The connection itself, for the layer above to tell Pingora about it.
    pub(super) fn get_ref(&self) -> &Stream {
        &self.inner
    }

    pub(super) fn get_mut(&mut self) -> &mut Stream {
        &mut self.inner
    }

    /// Arms the next request's deadline if a response has been written since the last; true
    /// when it did (the deadline is then a whole `timeout` away).
    fn arm_after_response(&mut self) -> bool {
        if !self.rearm {
            return false;
        }
        self.deadline = Some(Instant::now() + self.timeout);
        self.head_end = HeadEnd::default();
        self.rearm = false;
        self.past_first_request = true;
        true
    }

    /// Looks for the end of the headers in bytes just read; lifts the deadline there.
    fn scan(&mut self, bytes: &[u8]) {
        if self.deadline.is_some() && self.head_end.found_in(bytes) {
            self.deadline = None;
        }
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
        // Just armed, the deadline cannot have passed: no second clock read for it. Otherwise the
        // clock is read only while headers are awaited (never for a body), once per read.
        let just_armed = this.arm_after_response();
        if !just_armed && this.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request headers not complete within header_timeout_ms",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.scan(&buf.filled()[before..]);
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
    fn only_a_final_response_rearms() {
        assert!(starts_final_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_final_response(b"HTTP/1.1 403 Forbidden\r\n"));
        assert!(!starts_final_response(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!starts_final_response(b"{\"body\":1}"));
    }
}
