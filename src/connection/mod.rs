//! What an accepted connection goes through before Pingora reads it, one layer inside the other:
//!
//! - [`header_deadline`]: its request headers must arrive within `header_timeout`, each
//!   request's in turn, or it is cut (slowloris);
//! - [`first_request`]: its first request is read ahead, through that deadline, so that a stop or
//!   upgrade beginning meanwhile does not drop it unanswered.
//!
//! [`WithHeaderDeadline`] puts both around a Pingora app.

mod first_request;
mod header_deadline;

use async_trait::async_trait;
use first_request::ReadAhead;
use header_deadline::DeadlineStream;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

/// A server app whose connections have a header deadline, and reach it with their first request
/// read.
pub(crate) struct WithHeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> WithHeaderDeadline<A> {
    pub(crate) fn new(inner: A, timeout: Duration) -> Self {
        WithHeaderDeadline { inner: Arc::new(inner), timeout }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for WithHeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut stream = ReadAhead::new(DeadlineStream::new(stream, self.timeout));
        // A client that sends nothing never gets a read to fail at the deadline: this timer
        // closes it (one timer per connection, none per request).
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
