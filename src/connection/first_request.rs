//! A new connection's first request, read before Pingora gets the connection.
//!
//! When a stop or upgrade begins, Pingora drops every connection still waiting for its request,
//! even one accepted a moment before whose headers were on their way, or half in. So a new
//! connection is handed to Pingora only once its first request's headers have arrived whole
//! (or closed when they do not within `header_timeout`). Reading them here, where no stop
//! interrupts, closes that window: Pingora then finds the headers already read (kept in
//! [`ReadAhead`] and given back to its first reads), and a request it can read at once is always
//! answered. Bytes that cannot begin a request go to Pingora at once, to be refused there. A
//! keep-alive connection's later requests are Pingora's own to read; a stopping gateway closes
//! those connections after each response.
//!
//! The read-ahead reads through the header deadline ([`DeadlineStream`]), which finds where the
//! headers end.

use super::header_deadline::DeadlineStream;
use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Bytes of a first request read ahead at most. Past this Pingora reads the rest of the headers
/// itself (up to its own limit, 1 MiB), under the same deadline but without the protection
/// against a stop.
const READ_AHEAD_LIMIT: usize = 64 * 1024;

/// A connection whose first request was read ahead: what Pingora gets.
#[derive(Debug)]
pub(super) struct ReadAhead {
    inner: DeadlineStream,
    /// Bytes read ahead (the first request's headers), given back to the next reads first.
    read_ahead: Vec<u8>,
    /// How much of `read_ahead` has been given back.
    given_back: usize,
}

impl ReadAhead {
    pub(super) fn new(inner: DeadlineStream) -> Self {
        ReadAhead { inner, read_ahead: Vec::new(), given_back: 0 }
    }

    /// Reads until the first request's headers are complete, keeping what was read for the next
    /// reads. Stops early, to let Pingora deal with it at once, on what cannot be a request (see
    /// [`Shape`]), past `READ_AHEAD_LIMIT`, or when the client stops sending. False if it sent
    /// nothing at all.
    pub(super) async fn read_first_headers(&mut self) -> std::io::Result<bool> {
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut shape = Shape::Blank;
        while self.inner.reading_headers() && read.len() < READ_AHEAD_LIMIT {
            let n = self.inner.read(&mut chunk).await?;
            read.extend_from_slice(&chunk[..n]);
            shape = shape.after(&chunk[..n]);
            if n == 0 || shape == Shape::NotARequest {
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

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if this.give_back(buf) {
            this.inner.seen_again(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
impl Shutdown for ReadAhead {
    async fn shutdown(&mut self) {
        self.inner.get_mut().shutdown().await
    }
}

impl UniqueID for ReadAhead {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl Ssl for ReadAhead {}

impl GetTimingDigest for ReadAhead {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }
}

impl GetProxyDigest for ReadAhead {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for ReadAhead {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for ReadAhead {
    /// A peek fills `buf` whole (as Pingora's own streams do) or says it cannot (`false`): from
    /// the read-ahead bytes while there are any, else from the socket. keygate's listeners (no
    /// TLS, no h2c) never peek after the read-ahead.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let left = &self.read_ahead[self.given_back..];
        match left.len() {
            0 => self.inner.get_mut().try_peek(buf).await,
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
}
