//! HTTP/1.1 on compio: hyper 1.x driven through `cyper_core` (the stream adaptor and timer
//! for compio 0.19), the body type every server answers with, the OCI error model, and the
//! distribution API's paths and `Range` header.
//!
//! - [`serve`]: the accept loop. One task per connection on the caller's compio runtime, at
//!   most [`HttpConfig::connections_max`] at once (the loop stops accepting at the bound, so
//!   the kernel's backlog absorbs bursts), each request's head read within
//!   [`HttpConfig::header_read_timeout`] (which also bounds an idle keep-alive connection).
//! - [`Handler`]: what a server implements: one request in, one response out. Errors are
//!   responses too ([`OciError::into_response`]).
//! - [`LocalBody`]: empty, one buffer, or a blob streamed from the engine chunk by chunk.
//! - [`blob::blob_response`]: a blob's `GET`/`HEAD` with one byte range (agent and origin).
//!
//! A client that hangs up mid-response ends its connection's task (hyper reports the write
//! error, logged at debug); the response body is dropped, which releases the blob it pinned.

pub mod blob;
pub mod body;
pub mod client;
pub mod error;
pub mod metrics;
pub mod query;
pub mod range;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use compio::net::TcpListener;
use cyper_core::{CompioTimer, HyperStream};
use event_listener::Event;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tracing::Instrument;

pub use body::{BLOB_CHUNK_BYTES, LocalBody};
pub use error::{ErrorCode, OciError, method_not_allowed};

/// One HTTP server's bounds.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Connections served at once; at the bound, accepting waits for one to close.
    pub connections_max: usize,
    /// Time from the moment a connection waits for a request to its last header line; a
    /// connection that idles longer between requests is closed too.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes; hyper answers 431 beyond.
    pub request_head_bytes_max: usize,
}

/// hyper refuses read buffers below this (its own minimum).
const REQUEST_HEAD_BYTES_MIN: usize = 8192;

/// Pause after a failed `accept` (out of descriptors, say) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            connections_max: 1024,
            header_read_timeout: Duration::from_secs(30),
            request_head_bytes_max: 64 * 1024,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.connections_max == 0 {
            return Err("http config: connections_max must be positive".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("http config: header_read_timeout must be positive".into());
        }
        if self.request_head_bytes_max < REQUEST_HEAD_BYTES_MIN {
            return Err(format!(
                "http config: request_head_bytes_max must be at least {REQUEST_HEAD_BYTES_MIN}"
            ));
        }
        Ok(())
    }
}

/// A server's request handling: every request gets a response, errors included.
pub trait Handler: 'static {
    fn handle(&self, request: Request<Incoming>) -> impl Future<Output = Response<LocalBody>>;
}

/// Serves HTTP/1.1 on `listener` with `handler`, for ever (the caller stops it by dropping
/// the future or ending the runtime; connections already accepted run to their end). Errors
/// only on a config that does not validate ([`io::ErrorKind::InvalidInput`]). Must run
/// inside a compio runtime.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    config: HttpConfig,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut builder = http1::Builder::new();
    builder
        .timer(CompioTimer)
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.request_head_bytes_max);
    let slots = Rc::new(Slots {
        open: std::cell::Cell::new(0),
        freed: Event::new(),
    });
    tracing::info!(addr = ?listener.local_addr().ok(), "http serving");
    loop {
        slots.wait_below(config.connections_max).await;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                compio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let slot = Slot::take(&slots);
        let handler = Rc::clone(&handler);
        let connection = builder.serve_connection(
            HyperStream::new_plain(stream),
            service_fn(move |request: Request<Incoming>| {
                let handler = Rc::clone(&handler);
                let span = tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                );
                async move {
                    let response = handler.handle(request).await;
                    tracing::debug!(status = response.status().as_u16(), "response");
                    Ok::<_, Infallible>(response)
                }
                .instrument(span)
            }),
        );
        compio::runtime::spawn(async move {
            if let Err(error) = connection.await {
                // A client that hung up, timed out, or sent garbage: nothing to do but end.
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(slot);
        })
        .detach();
    }
}

/// Counts open connections; wakes the accept loop when one closes.
struct Slots {
    open: std::cell::Cell<usize>,
    freed: Event,
}

impl Slots {
    async fn wait_below(&self, max: usize) {
        loop {
            if self.open.get() < max {
                return;
            }
            let listener = self.freed.listen();
            if self.open.get() < max {
                return;
            }
            listener.await;
        }
    }
}

/// One open connection; frees its slot when dropped.
struct Slot(Rc<Slots>);

impl Slot {
    fn take(slots: &Rc<Slots>) -> Slot {
        slots.open.set(slots.open.get() + 1);
        Slot(Rc::clone(slots))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.freed.notify(1);
    }
}
