//! The agent's HTTP front: the OCI distribution **pull** API on the host's loopback, over one
//! [`Engine`], plus push forwarding so one address serves `docker pull` and `docker push`.
//!
//! - `GET /v2/` → 200 `{}`.
//! - `GET|HEAD /v2/<name>/blobs/<digest>` → the blob, streamed through [`Engine::open`] as
//!   its pieces are verified, whether it is cached or still coming through the swarm. One
//!   byte range (`Range: bytes=a-b`, `a-`, `-n`) gives a 206; a range past the end a 416.
//!   `HEAD` only asks for the length ([`Engine::blob_len`]): it starts no download (and
//!   stays local, also when a client checks a blob before pushing it). A blob that cannot
//!   be looked up now (trackers, origins or the storage backend down) is 503 `UNAVAILABLE`
//!   to a GET (retry) and 404 `BLOB_UNKNOWN` to a HEAD (so a push goes on).
//! - `GET|HEAD /v2/<name>/manifests/<tag|digest>` and `GET /v2/<name>/tags/list` → the
//!   [`Registry`] (tag at the build-index on every request, bytes from the origin), shared
//!   with the proxy in [`crate::manifests`]. Without a registry: 503 `UNAVAILABLE`.
//! - `GET /v2/<name>/referrers/<digest>` → the build-index's referrers of the digest in
//!   `<name>` ([`manifests::referrers_response`], as the proxy answers).
//! - Pushes (every `/v2/<name>/blobs/uploads/…` request, `PUT|DELETE` of manifests,
//!   `DELETE` of blobs, which the proxy refuses) and `GET /v2/_catalog` → forwarded to the
//!   proxy ([`Agent::forward`]): request body and response body streamed, hop-by-hop
//!   headers dropped. Without a proxy: 503 `UNAVAILABLE` (a blob `DELETE`: 405).
//! - Mirror mode: a request with containerd's `?ns=<registry>` is served for repository
//!   `<registry>/<name>` ([`mirrored_path`]).
//! - `GET /metrics` → the engine's counters, Prometheus text ([`crate::http::metrics`]).
//!
//! Blobs are content-addressed and shared by every repository: the repository name is
//! checked against the grammar but does not restrict which blobs it can read. It travels
//! with the reads that can reach a storage backend (the tracker's metainfo request, the
//! manifest reads from the origin), so that a pull-through repository's upstream fills a
//! miss.
//!
//! Runs on one compio runtime of its own (see `shoal agent`); the engine's shards are other
//! threads, and each blob stream reads the store's files from this runtime. Serving HTTP
//! on the shards themselves is a later optimisation.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;

use http::header::{CONNECTION, CONTENT_TYPE, EXPECT, HOST, HeaderName};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use shoal_engine::{Engine, EngineError};
use shoal_proto::Digest;
use shoal_proto::tracker_wire::Repository;

pub use crate::http::blob::CONTENT_DIGEST_HEADER;
use crate::http::blob::{blob_response, engine_error};
use crate::http::client::{ClientBody, HttpClient};
use crate::http::metrics::{METRICS_PATH, metrics_response};
use crate::http::route::Route;
use crate::http::{ErrorCode, Handler, LocalBody, OciError, method_not_allowed, query};
use crate::manifests;
use crate::registry::Registry;

/// Sent on every response: clients check it on `/v2/`.
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
pub const API_VERSION: &str = "registry/2.0";

/// The query parameter containerd adds to every request it sends to a mirror: the registry
/// the image is pulled from (`ns=docker.io`).
pub const MIRROR_NS_PARAM: &str = "ns";

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the usual non-standard ones): never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The agent's HTTP handler.
#[derive(Debug)]
pub struct Agent {
    engine: Engine,
    registry: Option<Registry>,
    proxy: Option<(HttpClient, SocketAddr)>,
}

impl Handler for Agent {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let (parts, body) = request.into_parts();
        let mut response = match self.route(&parts, body).await {
            Ok(response) => response,
            Err(error) => {
                if error.code.status().is_server_error() {
                    tracing::warn!(method = %parts.method, path = parts.uri.path(), %error,
                        "request failed");
                }
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
        response
    }
}

impl Agent {
    /// An agent serving blobs only: manifests and tags answer 503 until
    /// [`Agent::with_registry`], pushes 503 until [`Agent::with_proxy`].
    pub fn new(engine: Engine) -> Agent {
        Agent {
            engine,
            registry: None,
            proxy: None,
        }
    }

    /// Serves manifests (from the origin) and tags (from the build-index) through `registry`.
    pub fn with_registry(mut self, registry: Registry) -> Agent {
        self.registry = Some(registry);
        self
    }

    /// Forwards pushes and the catalog to the proxy at `proxy` with `client`.
    pub fn with_proxy(mut self, client: HttpClient, proxy: SocketAddr) -> Agent {
        self.proxy = Some((client, proxy));
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().map(|(_, addr)| *addr)
    }

    async fn route(&self, parts: &Parts, body: Incoming) -> Result<Response<LocalBody>, OciError> {
        let method = &parts.method;
        let query = parts.uri.query().unwrap_or("");
        let read = method == Method::GET || method == Method::HEAD;
        let head = method == Method::HEAD;
        if parts.uri.path() == METRICS_PATH {
            return Ok(metrics_response(method, &self.engine.stats()));
        }
        let path = mirrored_path(parts.uri.path(), query);
        match Route::parse(&path)? {
            Route::Base if read => {
                let mut response = Response::new(LocalBody::full(&b"{}"[..]));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(response)
            }
            Route::Blob { name, digest } if read => {
                self.blob(name, &digest, &parts.headers, head).await
            }
            Route::Manifest { name, reference } if read => {
                manifests::manifest_response(self.need_registry()?, name, &reference, head).await
            }
            Route::Manifest { .. } if method == Method::PUT || method == Method::DELETE => {
                self.forward(parts, &path, body).await
            }
            Route::TagsList { name } if method == Method::GET => {
                manifests::tags_list_response(self.need_registry()?, name, query).await
            }
            Route::Referrers { name, digest } if method == Method::GET => {
                manifests::referrers_response(self.need_registry()?, name, &digest, query).await
            }
            // The proxy says whether (and why not) a blob can be deleted; an agent without
            // one only serves reads.
            Route::Blob { .. } if method == Method::DELETE && self.proxy.is_some() => {
                self.forward(parts, &path, body).await
            }
            // Every upload request, whatever its method: the proxy answers for them all.
            Route::Upload { .. } => self.forward(parts, &path, body).await,
            Route::Catalog if method == Method::GET => self.forward(parts, &path, body).await,
            Route::Catalog | Route::TagsList { .. } | Route::Referrers { .. } => {
                Ok(method_not_allowed(method, "GET"))
            }
            Route::Manifest { .. } => Ok(method_not_allowed(method, "GET, HEAD, PUT, DELETE")),
            Route::Base | Route::Blob { .. } => Ok(method_not_allowed(method, "GET, HEAD")),
        }
    }

    fn need_registry(&self) -> Result<&Registry, OciError> {
        self.registry.as_ref().ok_or_else(|| {
            OciError::new(
                ErrorCode::Unavailable,
                "this agent serves no manifests or tags: start it with --origin and \
                 --build-index",
            )
        })
    }

    /// Sends the request to the proxy (same method, `path` — the mirrored one — and query,
    /// the end-to-end headers, the body streamed) and relays its answer as it comes
    /// (status, end-to-end headers, body streamed). `Location` headers are paths, so they
    /// lead the client back to this agent.
    async fn forward(
        &self,
        parts: &Parts,
        path: &str,
        body: Incoming,
    ) -> Result<Response<LocalBody>, OciError> {
        let Some((client, addr)) = &self.proxy else {
            return Err(OciError::new(
                ErrorCode::Unavailable,
                "this agent does not take pushes: start it with --proxy, or push to the proxy",
            ));
        };
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        // hyper's client sets Host for the proxy, and sends the body without waiting for a
        // 100 Continue (the client's own Expect was answered by our server).
        headers.remove(HOST);
        headers.remove(EXPECT);
        let target = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let upstream = client
            .request(
                parts.method.clone(),
                *addr,
                &target,
                headers,
                ClientBody::stream(body),
            )
            .await
            .map_err(|error| {
                OciError::new(ErrorCode::Unavailable, format!("the proxy: {error}"))
            })?;
        let (upstream_parts, upstream_body) = upstream.into_parts();
        let mut response =
            Response::new(LocalBody::stream(upstream_body.map_err(io::Error::other)));
        *response.status_mut() = upstream_parts.status;
        *response.headers_mut() = upstream_parts.headers;
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    /// `GET` or `HEAD` of a blob (with at most one byte range) of repository `name`: the
    /// tracker is asked for the metainfo on behalf of `name`, so that an origin that lacks
    /// the blob fills it from `name`'s storage backend.
    async fn blob(
        &self,
        name: &str,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<LocalBody>, OciError> {
        let repository = Repository::new(name)
            .map_err(|e| OciError::new(ErrorCode::NameInvalid, format!("{name:?}: {e}")))?;
        if !head {
            // Starts the download if the blob is neither cached nor coming: its length is
            // then known here, with one trip to the tracker.
            self.engine
                .fetch_for(digest, Some(&repository))
                .await
                .map_err(engine_error)?;
        }
        let blob_len = match self.engine.blob_len_for(digest, Some(&repository)).await {
            Ok(blob_len) => blob_len,
            // A HEAD asks whether to upload: a blob that cannot be looked up now (trackers,
            // origins or the storage backend down) is answered as unknown, so a push goes on
            // through an outage (uploads are by digest: one that existed costs a transfer).
            // A GET says 503, and the client retries.
            Err(EngineError::Tracker(reason)) if head => {
                tracing::warn!(%digest, %reason, "a blob could not be looked up; answering HEAD as unknown");
                return Err(OciError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} could not be looked up now ({reason})"),
                )
                .with_detail(serde_json::json!({ "digest": digest.to_string() })));
            }
            Err(error) => return Err(engine_error(error)),
        };
        blob_response(&self.engine, digest, blob_len, headers, head).await
    }
}

/// The path a request is served for. containerd's mirror requests carry `?ns=<registry>`:
/// `/v2/<name>/…?ns=docker.io` is served as `/v2/docker.io/<name>/…`, so each upstream
/// registry gets its own namespace of repositories and nothing is renamed otherwise. `/v2/`
/// and `/v2/_catalog` are the same with or without `ns`. A namespace that does not fit the
/// name grammar (a registry with a port, `localhost:5000`) makes the name invalid: 400
/// `NAME_INVALID`.
pub fn mirrored_path<'a>(path: &'a str, query: &str) -> Cow<'a, str> {
    let Some(ns) = query::param(query, MIRROR_NS_PARAM).filter(|ns| !ns.is_empty()) else {
        return Cow::Borrowed(path);
    };
    match path.strip_prefix("/v2/") {
        Some(rest) if !rest.is_empty() && rest != "_catalog" => {
            Cow::Owned(format!("/v2/{ns}/{rest}"))
        }
        _ => Cow::Borrowed(path),
    }
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(http::header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_paths() {
        assert_eq!(
            mirrored_path("/v2/library/alpine/manifests/3", "ns=docker.io"),
            "/v2/docker.io/library/alpine/manifests/3"
        );
        assert_eq!(mirrored_path("/v2/a/tags/list", "n=1"), "/v2/a/tags/list");
        assert_eq!(mirrored_path("/v2/", "ns=docker.io"), "/v2/");
        assert_eq!(
            mirrored_path("/v2/_catalog", "ns=docker.io"),
            "/v2/_catalog"
        );
        assert_eq!(mirrored_path("/v2/a/tags/list", "ns="), "/v2/a/tags/list");
    }

    #[test]
    fn hop_by_hop_headers_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-type", HeaderValue::from_static("a/b"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }
}
