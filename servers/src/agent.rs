//! The agent's HTTP front: the OCI distribution **pull** API on the host's loopback, over one
//! [`Engine`]. First slice: the version check and blobs; manifests and tags come later.
//!
//! - `GET /v2/` → 200 `{}`.
//! - `GET|HEAD /v2/<name>/blobs/<digest>` → the blob, streamed through [`Engine::open`] as
//!   its pieces are verified, whether it is cached or still coming through the swarm. One
//!   byte range (`Range: bytes=a-b`, `a-`, `-n`) gives a 206; a range past the end a 416.
//!   `HEAD` only asks for the length ([`Engine::blob_len`]): it starts no download.
//! - Everything else: an OCI error (404 for what is not served yet, 405 `UNSUPPORTED` for
//!   pushes: the agent is pull-only).
//!
//! Blobs are content-addressed and shared by every repository: the repository name is
//! checked against the grammar but does not restrict which blobs it can read.
//!
//! Runs on one compio runtime of its own (see `shoal agent`); the engine's shards are other
//! threads, and each blob stream reads the store's files from this runtime. Serving HTTP
//! on the shards themselves is a later optimisation.

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use shoal_engine::Engine;
use shoal_proto::Digest;

pub use crate::http::blob::CONTENT_DIGEST_HEADER;
use crate::http::blob::{blob_response, engine_error};
use crate::http::route::Route;
use crate::http::{ErrorCode, Handler, LocalBody, OciError, method_not_allowed};

/// Sent on every response: clients check it on `/v2/`.
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
pub const API_VERSION: &str = "registry/2.0";

/// The agent's HTTP handler.
#[derive(Debug)]
pub struct Agent {
    engine: Engine,
}

impl Handler for Agent {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        self.respond(request.method(), request.uri().path(), request.headers())
            .await
    }
}

impl Agent {
    pub fn new(engine: Engine) -> Agent {
        Agent { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The response to a request's head (the agent reads no request bodies). Every
    /// response carries `Docker-Distribution-API-Version`.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Response<LocalBody> {
        let mut response = match self.route(method, path, headers).await {
            Ok(response) => response,
            Err(error) => {
                if error.code.status().is_server_error() {
                    tracing::warn!(%method, path, %error, "request failed");
                }
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
        response
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<LocalBody>, OciError> {
        let read = method == Method::GET || method == Method::HEAD;
        match Route::parse(path)? {
            Route::Base if read => {
                let mut response = Response::new(LocalBody::full(&b"{}"[..]));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(response)
            }
            Route::Blob { digest, .. } if read => {
                self.blob(&digest, headers, method == Method::HEAD).await
            }
            Route::Manifest { .. } if read => Err(OciError::new(
                ErrorCode::ManifestUnknown,
                "this agent does not serve manifests yet",
            )),
            Route::TagsList { name } if method == Method::GET => Err(OciError::new(
                ErrorCode::NameUnknown,
                format!("this agent does not list tags yet ({name})"),
            )),
            Route::Upload { .. } => Err(OciError::new(
                ErrorCode::Unsupported,
                "the agent is pull-only: push through the proxy",
            )),
            Route::Catalog => Err(OciError::new(
                ErrorCode::Unsupported,
                "the agent has no catalog",
            )),
            Route::TagsList { .. } => Ok(method_not_allowed(method, "GET")),
            Route::Base | Route::Blob { .. } | Route::Manifest { .. } => {
                Ok(method_not_allowed(method, "GET, HEAD"))
            }
        }
    }

    /// `GET` or `HEAD` of a blob (with at most one byte range).
    async fn blob(
        &self,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<LocalBody>, OciError> {
        if !head {
            // Starts the download if the blob is neither cached nor coming: its length is
            // then known here, with one trip to the tracker.
            self.engine.fetch(digest).await.map_err(engine_error)?;
        }
        let blob_len = self.engine.blob_len(digest).await.map_err(engine_error)?;
        blob_response(&self.engine, digest, blob_len, headers, head).await
    }
}
