//! An HTTP/1.1 client on compio: hyper 1.x's `client::conn::http1` over
//! `cyper_core::HyperStream::new_plain(compio TcpStream)`, for the servers' internal APIs
//! (the proxy talking to the origin and the build-index, later the agent to the build-index).
//!
//! **One connection per request.** Every [`HttpClient::request`] dials, sends one request
//! and lets the connection close once the response body is read or dropped. That costs a
//! handshake per request, which is cheap on the loopback and data-centre links these APIs
//! run over and small next to a blob transfer; a per-peer connection pool is a later
//! optimisation, to be kept only if it measures better.
//!
//! Usable from any compio runtime (the connection's driver task is spawned on the caller's
//! runtime). Not `Send`: a client value is cheap to clone per runtime.
//!
//! Bounds: [`ClientConfig::connect_timeout`] for the TCP connect, and
//! [`ClientConfig::response_timeout`] (plus the time to send the request body at
//! [`ClientConfig::body_bytes_per_s_min`]) until the response head; body reads are bounded
//! in bytes by the caller ([`read_body_bounded`]) and in time by
//! [`ClientConfig::response_timeout`] ([`HttpClient::read_body`]).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use compio::io::AsyncReadAt;
use compio::net::TcpStream;
use cyper_core::HyperStream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::BLOB_CHUNK_BYTES;

/// The client's time bounds.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on waiting for the response head once the request body is sent, and on reading
    /// a response body with [`HttpClient::read_body`].
    pub response_timeout: Duration,
    /// The slowest request-body upload tolerated: a request with an `n`-byte body may take
    /// `n / body_bytes_per_s_min` seconds more before its response head is due.
    pub body_bytes_per_s_min: u64,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            body_bytes_per_s_min: 1 << 20,
        }
    }
}

/// What can go wrong talking to an upstream server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{what} from {addr} timed out after {after:?}")]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("invalid request to {addr}: {message}")]
    InvalidRequest { addr: SocketAddr, message: String },
    #[error("response body longer than {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("reading the response body: {0}")]
    Body(#[source] hyper::Error),
    #[error("reading the response body timed out after {0:?}")]
    BodyTimeout(Duration),
    #[error("response body is not the JSON expected: {0}")]
    Json(#[source] serde_json::Error),
    #[error("opening {path} to send: {source}")]
    File {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The upstream could not be reached or did not answer in time: a caller answers 503
    /// (retry later) rather than 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Http { .. }
                | ClientError::Body(_)
                | ClientError::BodyTimeout(_)
        )
    }
}

/// A request body: nothing, one buffer, a file streamed from disk in [`BLOB_CHUNK_BYTES`]
/// chunks (one chunk in memory at a time, read when hyper asks for it), or another body
/// relayed frame by frame ([`ClientBody::stream`]: a server's request body forwarded
/// upstream). The first three have an exact length, so hyper sends `Content-Length`; a
/// relayed body has its source's size hint (chunked when the length is not known).
pub struct ClientBody {
    kind: BodyKind,
}

enum BodyKind {
    Empty,
    Full(Option<Bytes>),
    File(FileBody),
    Stream(StreamBody),
}

/// A relayed body, and when it last made progress (shared with the request that waits on
/// it: see [`HttpClient::forward`]).
struct StreamBody {
    body: Incoming,
    progress: Rc<Cell<Instant>>,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BodyKind::Empty => f.write_str("ClientBody::Empty"),
            BodyKind::Full(b) => write!(f, "ClientBody::Full({:?})", b.as_ref().map(Bytes::len)),
            BodyKind::File(file) => write!(f, "ClientBody::File({} left)", file.remaining),
            BodyKind::Stream(stream) => {
                write!(f, "ClientBody::Stream({:?})", stream.body.size_hint())
            }
        }
    }
}

type FileRead = Pin<Box<dyn Future<Output = (compio::fs::File, io::Result<Vec<u8>>)>>>;

struct FileBody {
    state: FileState,
    offset: u64,
    remaining: u64,
}

enum FileState {
    Idle(compio::fs::File),
    Reading(FileRead),
    Done,
}

impl ClientBody {
    pub fn empty() -> ClientBody {
        ClientBody {
            kind: BodyKind::Empty,
        }
    }

    pub fn bytes(bytes: impl Into<Bytes>) -> ClientBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return ClientBody::empty();
        }
        ClientBody {
            kind: BodyKind::Full(Some(bytes)),
        }
    }

    /// The first `len` bytes of the file at `path`. A file shorter than `len` ends the body
    /// with an error (the upstream then sees a truncated request and the exchange fails).
    pub async fn file(path: &Path, len: u64) -> Result<ClientBody, ClientError> {
        let file = compio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::File {
                path: path.display().to_string(),
                source,
            })?;
        let state = if len == 0 {
            FileState::Done
        } else {
            FileState::Idle(file)
        };
        Ok(ClientBody {
            kind: BodyKind::File(FileBody {
                state,
                offset: 0,
                remaining: len,
            }),
        })
    }

    /// Relays `body` (a request body a server received) frame by frame as hyper asks for
    /// them: one frame in memory at a time.
    pub fn stream(body: Incoming) -> ClientBody {
        ClientBody {
            kind: BodyKind::Stream(StreamBody {
                body,
                progress: Rc::new(Cell::new(Instant::now())),
            }),
        }
    }

    /// The exact length, or for a relayed body the least it will be.
    fn len(&self) -> u64 {
        match &self.kind {
            BodyKind::Empty => 0,
            BodyKind::Full(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            BodyKind::File(file) => file.remaining,
            BodyKind::Stream(stream) => stream.body.size_hint().lower(),
        }
    }

    /// When a relayed body last yielded a frame (or was created); `None` for the others.
    fn progress(&self) -> Option<Rc<Cell<Instant>>> {
        match &self.kind {
            BodyKind::Stream(stream) => Some(Rc::clone(&stream.progress)),
            _ => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.kind {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::File(file) => file.poll_chunk(cx),
            BodyKind::Stream(stream) => {
                let polled = Pin::new(&mut stream.body).poll_frame(cx);
                if polled.is_ready() {
                    stream.progress.set(Instant::now());
                }
                polled.map(|frame| frame.map(|frame| frame.map_err(io::Error::other)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Empty => true,
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::File(file) => matches!(file.state, FileState::Done),
            BodyKind::Stream(stream) => stream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Stream(stream) => stream.body.size_hint(),
            _ => SizeHint::with_exact(self.len()),
        }
    }
}

impl FileBody {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            match std::mem::replace(&mut self.state, FileState::Done) {
                FileState::Done => return Poll::Ready(None),
                FileState::Idle(file) => {
                    // At most BLOB_CHUNK_BYTES: fits in usize.
                    let len = self.remaining.min(BLOB_CHUNK_BYTES as u64) as usize;
                    let offset = self.offset;
                    self.state = FileState::Reading(Box::pin(async move {
                        let buf = Vec::with_capacity(len);
                        let compio::BufResult(result, buf) = file.read_at(buf, offset).await;
                        (file, result.map(|_| buf))
                    }));
                }
                FileState::Reading(mut read) => {
                    let (file, result) = match read.as_mut().poll(cx) {
                        Poll::Pending => {
                            self.state = FileState::Reading(read);
                            return Poll::Pending;
                        }
                        Poll::Ready(done) => done,
                    };
                    let buf = match result {
                        Ok(buf) if !buf.is_empty() => buf,
                        Ok(_) => {
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("file ended {} bytes early", self.remaining),
                            ))));
                        }
                        Err(error) => return Poll::Ready(Some(Err(error))),
                    };
                    let n = (buf.len() as u64).min(self.remaining);
                    self.offset += n;
                    self.remaining -= n;
                    if self.remaining > 0 {
                        self.state = FileState::Idle(file);
                    }
                    let mut bytes = Bytes::from(buf);
                    // n <= buf.len(), which is a usize.
                    bytes.truncate(n as usize);
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
        }
    }
}

/// The HTTP client. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HttpClient {
    config: ClientConfig,
}

impl HttpClient {
    pub fn new(config: ClientConfig) -> HttpClient {
        HttpClient { config }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends one request to `addr` on a new connection and returns the response with its
    /// body still to be read (the connection closes when the body is read or dropped).
    /// `Host` is set to `addr` unless `headers` has one.
    ///
    /// Bounded by [`ClientConfig::connect_timeout`], then by
    /// [`ClientConfig::response_timeout`] plus the body's upload time at
    /// [`ClientConfig::body_bytes_per_s_min`] until the response head. A relayed body
    /// ([`ClientBody::stream`]) is bounded by progress instead: the exchange fails once
    /// [`ClientConfig::response_timeout`] passes with neither a body frame relayed nor the
    /// response head received, so a long upload from a slow client goes through while a
    /// stalled one does not hold the connection for ever.
    pub async fn request(
        &self,
        method: Method,
        addr: SocketAddr,
        path_and_query: &str,
        headers: HeaderMap,
        body: ClientBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(body)
            .map_err(|e| ClientError::InvalidRequest {
                addr,
                message: e.to_string(),
            })?;
        *request.headers_mut() = headers;
        if !request.headers().contains_key(header::HOST) {
            let host = HeaderValue::try_from(addr.to_string()).map_err(|e| {
                ClientError::InvalidRequest {
                    addr,
                    message: e.to_string(),
                }
            })?;
            request.headers_mut().insert(header::HOST, host);
        }

        let connect = self.config.connect_timeout;
        let stream = compio::time::timeout(connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                what: "connect",
                after: connect,
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);

        let progress = request.body().progress();
        // The request body's upload counts against the response bound.
        let body_secs = request.body().len() / self.config.body_bytes_per_s_min.max(1);
        let wait = self.config.response_timeout + Duration::from_secs(body_secs);
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(HyperStream::new_plain(stream))
                    .await
                    .map_err(|source| ClientError::Http { addr, source })?;
            compio::runtime::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%addr, %error, "client connection ended");
                }
            })
            .detach();
            sender
                .send_request(request)
                .await
                .map_err(|source| ClientError::Http { addr, source })
        };
        let timed_out = |after| ClientError::Timeout {
            addr,
            what: "response head",
            after,
        };
        let Some(progress) = progress else {
            return compio::time::timeout(wait, exchange)
                .await
                .map_err(|_| timed_out(wait))?;
        };
        let idle_max = self.config.response_timeout;
        progress.set(Instant::now());
        let mut exchange = std::pin::pin!(exchange);
        loop {
            let idle = progress.get().elapsed();
            if idle >= idle_max {
                return Err(timed_out(idle_max));
            }
            let sleep = std::pin::pin!(compio::time::sleep(idle_max - idle));
            match futures_util::future::select(exchange.as_mut(), sleep).await {
                futures_util::future::Either::Left((result, _)) => return result,
                futures_util::future::Either::Right(((), _)) => {}
            }
        }
    }

    /// [`read_body_bounded`] within [`ClientConfig::response_timeout`].
    pub async fn read_body(&self, body: Incoming, max: usize) -> Result<Bytes, ClientError> {
        let after = self.config.response_timeout;
        compio::time::timeout(after, read_body_bounded(body, max))
            .await
            .map_err(|_| ClientError::BodyTimeout(after))?
    }

    /// [`HttpClient::read_body`], then parsed as JSON.
    pub async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        body: Incoming,
        max: usize,
    ) -> Result<T, ClientError> {
        let bytes = self.read_body(body, max).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Json)
    }
}

/// Reads a whole body into memory, refusing one longer than `max` bytes (checked against
/// the declared length first, then as frames arrive; never buffers more than `max`). Used for
/// responses and for request bodies alike (both are hyper's `Incoming`).
pub async fn read_body_bounded(mut body: Incoming, max: usize) -> Result<Bytes, ClientError> {
    if body.size_hint().lower() > max as u64 {
        return Err(ClientError::BodyTooLarge { max });
    }
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ClientError::Body)?.into_data() else {
            continue; // trailers
        };
        if out.len() + data.len() > max {
            return Err(ClientError::BodyTooLarge { max });
        }
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::rc::Rc;

    use super::*;
    use crate::http::{Handler, HttpConfig, LocalBody, serve};

    /// Answers with the request's method, path and body length, then the body.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
            let head = format!("{} {}", request.method(), request.uri());
            let body = read_body_bounded(request.into_body(), 8 << 20)
                .await
                .unwrap();
            let mut out = format!("{head} {}\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            Response::new(LocalBody::full(out))
        }
    }

    #[test]
    fn sends_bytes_and_files_and_bounds_bodies() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            compio::runtime::spawn(serve(listener, Rc::new(Echo), HttpConfig::default())).detach();
            let client = HttpClient::default();

            let response = client
                .request(
                    Method::PUT,
                    addr,
                    "/x?a=1",
                    HeaderMap::new(),
                    ClientBody::bytes("hey"),
                )
                .await
                .unwrap();
            let body = client.read_body(response.into_body(), 1024).await.unwrap();
            assert_eq!(&body[..], b"PUT /x?a=1 3\nhey");

            // A file longer than one chunk, streamed.
            let dir = std::env::temp_dir().join(format!("shoal-client-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("blob");
            let data: Vec<u8> = (0..(BLOB_CHUNK_BYTES * 2 + 7)).map(|i| i as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let body = ClientBody::file(&path, data.len() as u64).await.unwrap();
            let response = client
                .request(Method::PUT, addr, "/f", HeaderMap::new(), body)
                .await
                .unwrap();
            let body = client
                .read_body(response.into_body(), 8 << 20)
                .await
                .unwrap();
            let header = format!("PUT /f {}\n", data.len());
            assert_eq!(&body[..header.len()], header.as_bytes());
            assert_eq!(&body[header.len()..], &data[..]);

            // The bound on a response body.
            let response = client
                .request(
                    Method::PUT,
                    addr,
                    "/f",
                    HeaderMap::new(),
                    ClientBody::bytes("0123456789"),
                )
                .await
                .unwrap();
            let error = client.read_body(response.into_body(), 5).await.unwrap_err();
            assert!(
                matches!(error, ClientError::BodyTooLarge { max: 5 }),
                "{error}"
            );
            let _ = std::fs::remove_dir_all(&dir);

            // Nobody listening: unavailable.
            let closed = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            let error = client
                .request(
                    Method::GET,
                    closed,
                    "/",
                    HeaderMap::new(),
                    ClientBody::empty(),
                )
                .await
                .unwrap_err();
            assert!(error.is_unavailable(), "{error}");
        });
    }
}
