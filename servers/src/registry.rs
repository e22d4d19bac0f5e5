//! [`Registry`]: the client side of the origin's and the build-index's internal HTTP APIs,
//! shared by the proxy (push) and, later, the agent (pull: tag → digest → manifest).
//!
//! The origins are an [`OriginCluster`] (one origin is a cluster of one): blobs are written to
//! every owner of their digest (success when at least one took it) and read from the first
//! origin in the digest's read order that has them. One build-index. The APIs it speaks:
//! - origin: `PUT /internal/blobs/<digest>` (body with `Content-Length`; 201, idempotent),
//!   `HEAD` (200 + `Content-Length`, or 404), `GET` (bytes, `Range` supported); PUT and GET
//!   carry `?repo=<name>`, the repository the blob is pushed or read for, when the caller
//!   knows it (the origin routes its storage backend by it), and a read of a manifest the
//!   build-index does not list adds `&confirm=upstream` ([`Registry::fetch_upstream_manifest`]);
//! - build-index: `GET|PUT|DELETE /internal/tags/<repo>/<tag>` (records
//!   `{"digest","media_type","version"}`), `GET /internal/tags/<repo>?n=&last=` and
//!   `GET /internal/repositories?n=&last=` (paginated with `Link: <…>; rel="next"`),
//!   `GET|PUT|DELETE /internal/manifests/<repo>/<digest>` (which manifests a repository
//!   holds, and their referrer records), `GET /internal/referrers/<repo>/<subject>`.
//!
//! Every digest that comes back is checked: a manifest fetched by digest must hash to it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use shoal_proto::Digest;

use crate::build_index::{MANIFEST_LEN_MAX, ManifestRecord, REFERRERS_RESPONSE_BYTES_MAX};
use crate::cluster::OriginCluster;
use crate::http::client::{ClientBody, ClientError, HttpClient};
use crate::http::query;
use crate::http::{ErrorCode, OciError};
use crate::origin::{BLOBS_PATH, CONFIRM_PARAM, CONFIRM_UPSTREAM, REPO_PARAM};

/// Largest JSON body accepted from the build-index (a tag record or one page of a listing:
/// at most `PAGE_LEN_MAX` names of at most 255 bytes each, with room to spare).
pub const INDEX_RESPONSE_BYTES_MAX: usize = 4 << 20;

/// What the build-index says a tag points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTarget {
    pub digest: Digest,
    pub media_type: String,
    pub version: u64,
}

#[derive(Deserialize)]
struct RawTagTarget {
    digest: String,
    media_type: String,
    version: u64,
}

#[derive(Serialize)]
struct TagPut<'a> {
    digest: String,
    media_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_version: Option<u64>,
}

/// One page of a listing from the build-index: its JSON body as sent, and the query string
/// of the next page when there is one (taken from the `Link` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub body: Bytes,
    pub next_query: Option<String>,
}

/// A failure talking to the origin or the build-index.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Unreachable or too slow: retry later (503).
    #[error("{upstream} unavailable: {source}")]
    Unavailable {
        upstream: &'static str,
        #[source]
        source: ClientError,
    },
    /// An answer the API does not give for this request.
    #[error("{upstream} answered {status} to {what}")]
    Status {
        upstream: &'static str,
        what: String,
        status: StatusCode,
    },
    /// A refusal or failure the client should see as is (an OCI error body: a subject with
    /// too many referrers, an origin whose storage backend could not fill a miss).
    #[error("{upstream} refused {what}: {error}")]
    Refused {
        upstream: &'static str,
        what: String,
        error: OciError,
    },
    /// An answer that does not make sense (bad JSON, a manifest that does not hash to its
    /// digest, a body past its bound).
    #[error("{upstream} sent an invalid answer to {what}: {message}")]
    Invalid {
        upstream: &'static str,
        what: String,
        message: String,
    },
}

impl RegistryError {
    /// The OCI error a server answers with: 503 `UNAVAILABLE` when the upstream is
    /// unreachable or failing (5xx), 500 `UNKNOWN` for anything else.
    pub fn to_oci(&self) -> OciError {
        let code = match self {
            RegistryError::Unavailable { .. } => ErrorCode::Unavailable,
            RegistryError::Status { status, .. } if status.is_server_error() => {
                ErrorCode::Unavailable
            }
            RegistryError::Refused { error, .. } => return error.clone(),
            RegistryError::Status { .. } | RegistryError::Invalid { .. } => ErrorCode::Unknown,
        };
        OciError::new(code, self.to_string())
    }
}

const ORIGIN: &str = "origin";
const BUILD_INDEX: &str = "build-index";

/// The origins and the build-index, as one client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    client: HttpClient,
    origins: OriginCluster,
    build_index: SocketAddr,
}

impl Registry {
    /// One origin and one build-index.
    pub fn new(client: HttpClient, origin: SocketAddr, build_index: SocketAddr) -> Registry {
        Registry::with_cluster(client, OriginCluster::single(origin), build_index)
    }

    /// A cluster of origins and one build-index.
    pub fn with_cluster(
        client: HttpClient,
        origins: OriginCluster,
        build_index: SocketAddr,
    ) -> Registry {
        Registry {
            client,
            origins,
            build_index,
        }
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    pub fn origins(&self) -> &OriginCluster {
        &self.origins
    }

    /// A request to the build-index.
    async fn call(
        &self,
        upstream: &'static str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: ClientBody,
    ) -> Result<Response<Incoming>, RegistryError> {
        self.call_at(self.build_index, upstream, method, path, headers, body)
            .await
    }

    async fn call_at(
        &self,
        addr: SocketAddr,
        upstream: &'static str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: ClientBody,
    ) -> Result<Response<Incoming>, RegistryError> {
        self.client
            .request(method, addr, path, headers, body)
            .await
            .map_err(|source| RegistryError::Unavailable { upstream, source })
    }

    /// Asks the origins that may hold `digest`, in [`OriginCluster::read_order`], until one
    /// has it: `ask` returns `Ok(None)` for "not here". `Ok(None)` overall when every origin
    /// that answered lacks it; the last error when none answered.
    async fn find_on_origins<T, F, Fut>(
        &self,
        digest: &Digest,
        mut ask: F,
    ) -> Result<Option<T>, RegistryError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<Option<T>, RegistryError>>,
    {
        let mut last_error = None;
        let mut answered = false;
        for addr in self.origins.read_order(digest) {
            match ask(addr).await {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => answered = true,
                Err(error) => {
                    tracing::debug!(origin = %addr, %digest, %error, "origin failed; trying the next");
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if !answered => Err(error),
            _ => Ok(None),
        }
    }

    async fn read(
        &self,
        upstream: &'static str,
        what: &str,
        body: Incoming,
        max: usize,
    ) -> Result<Bytes, RegistryError> {
        self.client
            .read_body(body, max)
            .await
            .map_err(|source| match source {
                ClientError::BodyTooLarge { .. } => RegistryError::Invalid {
                    upstream,
                    what: what.to_owned(),
                    message: source.to_string(),
                },
                source => RegistryError::Unavailable { upstream, source },
            })
    }

    /// The blob's length on the origins, or `None` if none of them has it.
    pub async fn blob_len(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        self.find_on_origins(digest, |addr| self.blob_len_at(addr, digest))
            .await
    }

    /// The blob's length on the origin at `addr`, or `None` if it does not have it.
    pub async fn blob_len_at(
        &self,
        addr: SocketAddr,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let what = format!("HEAD blob {digest}");
        let path = format!("/internal/blobs/{digest}");
        let response = self
            .call_at(
                addr,
                ORIGIN,
                Method::HEAD,
                &path,
                HeaderMap::new(),
                ClientBody::empty(),
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let len = response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| RegistryError::Invalid {
                        upstream: ORIGIN,
                        what: what.clone(),
                        message: "no valid Content-Length".into(),
                    })?;
                Ok(Some(len))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(status_error(ORIGIN, what, status)),
        }
    }

    /// Whether the origin has the blob.
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(self.blob_len(digest).await?.is_some())
    }

    /// Stores a verified blob on every owner origin, streaming the first `len` bytes of the
    /// file at `path` to each (one chunk per owner in memory at a time). Succeeds when at
    /// least one owner stored it: an owner that was down catches up from the others.
    /// `repository`: the repository it was pushed to (the origin writes it back to that
    /// repository's storage backend).
    pub async fn put_blob_file(
        &self,
        digest: &Digest,
        repository: Option<&str>,
        path: &Path,
        len: u64,
    ) -> Result<(), RegistryError> {
        self.put_on_owners(digest, |addr| async move {
            let body = ClientBody::file(path, len)
                .await
                .map_err(|e| RegistryError::Invalid {
                    upstream: "local disk",
                    what: format!("PUT blob {digest}"),
                    message: e.to_string(),
                })?;
            self.put_blob_at(addr, digest, repository, body).await
        })
        .await
    }

    /// Stores `bytes` (whose digest the caller checked) on every owner origin (at least one
    /// must take it).
    pub async fn put_blob_bytes(
        &self,
        digest: &Digest,
        repository: Option<&str>,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        self.put_on_owners(digest, |addr| {
            self.put_blob_at(addr, digest, repository, ClientBody::bytes(bytes.clone()))
        })
        .await
    }

    async fn put_on_owners<F, Fut>(&self, digest: &Digest, put: F) -> Result<(), RegistryError>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = Result<(), RegistryError>>,
    {
        let owners = self.origins.owners(digest);
        let results = futures_util::future::join_all(owners.iter().map(|&addr| put(addr))).await;
        let mut stored = 0;
        let mut last_error = None;
        for (addr, result) in owners.iter().zip(results) {
            match result {
                Ok(()) => stored += 1,
                Err(error) => {
                    tracing::warn!(origin = %addr, %digest, %error, "an owner did not take the blob; it catches up later");
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if stored == 0 => Err(error),
            _ if owners.is_empty() => Err(RegistryError::Invalid {
                upstream: ORIGIN,
                what: format!("PUT blob {digest}"),
                message: "the origin cluster has no members".into(),
            }),
            _ => Ok(()),
        }
    }

    /// `PUT` of a blob pushed to `repository` on the origin at `addr`.
    pub async fn put_blob_at(
        &self,
        addr: SocketAddr,
        digest: &Digest,
        repository: Option<&str>,
        body: ClientBody,
    ) -> Result<(), RegistryError> {
        let path = blob_path(digest, repository, false);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let response = self
            .call_at(addr, ORIGIN, Method::PUT, &path, headers, body)
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            status => Err(status_error(ORIGIN, format!("PUT blob {digest}"), status)),
        }
    }

    /// `GET` of a blob on the origin with the client's `Range`, if any, read for
    /// `repository` (an origin that lacks it fills it from that repository's storage
    /// backend): the origin's 200, 206 or 416 response with its body still to read, or
    /// `None` if it has no such blob.
    pub async fn get_blob(
        &self,
        digest: &Digest,
        repository: Option<&str>,
        range: Option<&HeaderValue>,
    ) -> Result<Option<Response<Incoming>>, RegistryError> {
        let path = blob_path(digest, repository, false);
        self.find_on_origins(digest, |addr| {
            let mut headers = HeaderMap::new();
            if let Some(range) = range {
                headers.insert(header::RANGE, range.clone());
            }
            self.get_blob_at(addr, digest, &path, headers)
        })
        .await
    }

    /// `GET path` (a blob's path, [`blob_path`]) on the origin at `addr` with `headers`: 200,
    /// 206 or 416 with the body still to read, or `None` if it does not hold the blob. An
    /// OCI error body on any other status comes back as [`RegistryError::Refused`].
    async fn get_blob_at(
        &self,
        addr: SocketAddr,
        digest: &Digest,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Option<Response<Incoming>>, RegistryError> {
        let response = self
            .call_at(
                addr,
                ORIGIN,
                Method::GET,
                path,
                headers,
                ClientBody::empty(),
            )
            .await?;
        let what = format!("GET blob {digest}");
        match response.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                Ok(Some(response))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                let body = self
                    .read(ORIGIN, &what, response.into_body(), ORIGIN_ERROR_BYTES_MAX)
                    .await
                    .unwrap_or_default();
                match parse_oci_error(&body) {
                    Some(error) => Err(RegistryError::Refused {
                        upstream: ORIGIN,
                        what,
                        error,
                    }),
                    None => Err(status_error(ORIGIN, what, status)),
                }
            }
        }
    }

    /// A manifest's bytes from the origin (manifests are stored there as blobs), read for
    /// `repository`, checked against `digest` and bounded by [`MANIFEST_LEN_MAX`]; `None` if
    /// the origin lacks it.
    pub async fn fetch_manifest(
        &self,
        digest: &Digest,
        repository: Option<&str>,
    ) -> Result<Option<Bytes>, RegistryError> {
        let path = blob_path(digest, repository, false);
        self.fetch_manifest_at_path(digest, &path).await
    }

    /// A manifest `repository` holds upstream though the build-index does not list it (a
    /// pull-through repository read by digest): the origin serves it only if the
    /// repository's storage backend holds it in that repository (`confirm=upstream`).
    /// Checked and bounded like [`Registry::fetch_manifest`]; `None` otherwise.
    pub async fn fetch_upstream_manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Bytes>, RegistryError> {
        let path = blob_path(digest, Some(repository), true);
        self.fetch_manifest_at_path(digest, &path).await
    }

    async fn fetch_manifest_at_path(
        &self,
        digest: &Digest,
        path: &str,
    ) -> Result<Option<Bytes>, RegistryError> {
        let what = format!("GET manifest {digest}");
        let found = self
            .find_on_origins(digest, |addr| {
                self.get_blob_at(addr, digest, path, HeaderMap::new())
            })
            .await?;
        let Some(response) = found else {
            return Ok(None);
        };
        if response.status() != StatusCode::OK {
            return Err(status_error(ORIGIN, what, response.status()));
        }
        let bytes = self
            .read(ORIGIN, &what, response.into_body(), MANIFEST_LEN_MAX)
            .await?;
        let actual = digest_like(digest, &bytes);
        if actual != *digest {
            return Err(RegistryError::Invalid {
                upstream: ORIGIN,
                what,
                message: format!("content hashes to {actual}"),
            });
        }
        Ok(Some(bytes))
    }

    /// What `repo:tag` points at, or `None` if the build-index has no such tag.
    pub async fn resolve_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagTarget>, RegistryError> {
        let what = format!("GET tag {repo}:{tag}");
        let path = format!("/internal/tags/{repo}/{tag}");
        let Some((_, bytes)) = self
            .get_index(&path, &what, INDEX_RESPONSE_BYTES_MAX)
            .await?
        else {
            return Ok(None);
        };
        let raw: RawTagTarget =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&what, e.to_string()))?;
        let digest = Digest::parse(&raw.digest).map_err(|e| invalid(&what, e.to_string()))?;
        Ok(Some(TagTarget {
            digest,
            media_type: raw.media_type,
            version: raw.version,
        }))
    }

    /// Points `repo:tag` at `digest`. The caller makes sure everything the manifest
    /// references is stored first.
    pub async fn put_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError> {
        let what = format!("PUT tag {repo}:{tag}");
        let body = serde_json::to_vec(&TagPut {
            digest: digest.to_string(),
            media_type,
            expected_version,
        })
        .map_err(|e| RegistryError::Invalid {
            upstream: BUILD_INDEX,
            what: what.clone(),
            message: e.to_string(),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let path = format!("/internal/tags/{repo}/{tag}");
        let response = self
            .call(
                BUILD_INDEX,
                Method::PUT,
                &path,
                headers,
                ClientBody::bytes(body),
            )
            .await?;
        match response.status() {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(()),
            status => Err(status_error(BUILD_INDEX, what, status)),
        }
    }

    /// Deletes a tag; `false` if there was none.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool, RegistryError> {
        let path = format!("/internal/tags/{repo}/{tag}");
        self.delete_index(&path, format!("DELETE tag {repo}:{tag}"))
            .await
    }

    /// A DELETE at the build-index: a 2xx → `true`, 404 → `false`, else an error naming `what`.
    async fn delete_index(&self, path: &str, what: String) -> Result<bool, RegistryError> {
        let response = self
            .call(
                BUILD_INDEX,
                Method::DELETE,
                path,
                HeaderMap::new(),
                ClientBody::empty(),
            )
            .await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(status_error(BUILD_INDEX, what, status)),
        }
    }

    /// The record of manifest `digest` of `repo`, or `None` if the repository does not hold
    /// it.
    pub async fn manifest_record(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, RegistryError> {
        let what = format!("GET manifest record {repo}@{digest}");
        let path = format!("/internal/manifests/{repo}/{digest}");
        let Some((_, bytes)) = self
            .get_index(&path, &what, INDEX_RESPONSE_BYTES_MAX)
            .await?
        else {
            return Ok(None);
        };
        let record = ManifestRecord::from_json(&bytes).map_err(|m| invalid(&what, m))?;
        if record.digest != *digest {
            return Err(invalid(
                &what,
                format!("the record is of {}", record.digest),
            ));
        }
        Ok(Some(record))
    }

    /// Records that `repo` holds `record.digest` (and, with a subject, lists it as a
    /// referrer). The caller stores the manifest on the origin first.
    pub async fn put_manifest_record(
        &self,
        repo: &str,
        record: &ManifestRecord,
    ) -> Result<(), RegistryError> {
        let what = format!("PUT manifest record {repo}@{}", record.digest);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let path = format!("/internal/manifests/{repo}/{}", record.digest);
        let body = ClientBody::bytes(record.to_json().to_string());
        let response = self
            .call(BUILD_INDEX, Method::PUT, &path, headers, body)
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_client_error() {
            let bytes = self
                .read(
                    BUILD_INDEX,
                    &what,
                    response.into_body(),
                    INDEX_RESPONSE_BYTES_MAX,
                )
                .await?;
            if let Some(error) = parse_oci_error(&bytes) {
                return Err(RegistryError::Refused {
                    upstream: BUILD_INDEX,
                    what,
                    error,
                });
            }
        }
        Err(status_error(BUILD_INDEX, what, status))
    }

    /// Removes manifest `digest` from `repo` (its tags there, its referrer record, its
    /// membership); `false` if the repository had neither it nor a tag naming it.
    pub async fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let path = format!("/internal/manifests/{repo}/{digest}");
        self.delete_index(&path, format!("DELETE manifest {repo}@{digest}"))
            .await
    }

    /// The descriptors of the referrers of `subject` in `repo` (none for an unknown
    /// subject), as the build-index lists them.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Vec<serde_json::Value>, RegistryError> {
        let what = format!("GET referrers of {repo}@{subject}");
        let path = format!("/internal/referrers/{repo}/{subject}");
        let Some((_, bytes)) = self
            .get_index(&path, &what, REFERRERS_RESPONSE_BYTES_MAX)
            .await?
        else {
            return Err(status_error(BUILD_INDEX, what, StatusCode::NOT_FOUND));
        };
        #[derive(Deserialize)]
        struct Listing {
            manifests: Vec<serde_json::Value>,
        }
        let listing: Listing =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&what, e.to_string()))?;
        Ok(listing.manifests)
    }

    /// One page of `repo`'s tags (`{"name","tags"}`), or `None` if the repository is unknown.
    pub async fn list_tags(
        &self,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Option<Listing>, RegistryError> {
        // The trailing `/` makes it a listing whatever the query: without it, the
        // build-index reads `/internal/tags/a/b` as tag `b` of `a`.
        let path = format!("/internal/tags/{repo}/{}", page_query(n, last));
        self.list(&path, format!("list tags of {repo}")).await
    }

    /// One page of the repositories (`{"repositories"}`).
    pub async fn list_repositories(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Listing, RegistryError> {
        let path = format!("/internal/repositories{}", page_query(n, last));
        let what = "list repositories".to_owned();
        match self.list(&path, what.clone()).await? {
            Some(listing) => Ok(listing),
            None => Err(status_error(BUILD_INDEX, what, StatusCode::NOT_FOUND)),
        }
    }

    async fn list(&self, path: &str, what: String) -> Result<Option<Listing>, RegistryError> {
        let Some((headers, body)) = self
            .get_index(path, &what, INDEX_RESPONSE_BYTES_MAX)
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| invalid(&what, e.to_string()))?;
        let next_query = headers
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link_query);
        Ok(Some(Listing { body, next_query }))
    }

    /// `GET path` on the build-index: the response's headers and body (at most `max` bytes)
    /// on 200, `None` on 404, an error naming `what` on any other status.
    async fn get_index(
        &self,
        path: &str,
        what: &str,
        max: usize,
    ) -> Result<Option<(HeaderMap, Bytes)>, RegistryError> {
        let response = self
            .call(
                BUILD_INDEX,
                Method::GET,
                path,
                HeaderMap::new(),
                ClientBody::empty(),
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let (parts, body) = response.into_parts();
                let bytes = self.read(BUILD_INDEX, what, body, max).await?;
                Ok(Some((parts.headers, bytes)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(status_error(BUILD_INDEX, what.to_owned(), status)),
        }
    }
}

/// A build-index answer to `what` that does not make sense.
fn invalid(what: &str, message: String) -> RegistryError {
    RegistryError::Invalid {
        upstream: BUILD_INDEX,
        what: what.to_owned(),
        message,
    }
}

fn status_error(upstream: &'static str, what: String, status: StatusCode) -> RegistryError {
    RegistryError::Status {
        upstream,
        what,
        status,
    }
}

/// The first error of an OCI error body (`{"errors":[{"code","message","detail"?}]}`), if
/// the body is one with a code we know.
pub fn parse_oci_error(body: &[u8]) -> Option<OciError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = value.get("errors")?.get(0)?;
    let wire = first.get("code")?.as_str()?;
    let code = ErrorCode::ALL.into_iter().find(|c| c.as_str() == wire)?;
    let message = first.get("message").and_then(|m| m.as_str()).unwrap_or("");
    let detail = first.get("detail").cloned().unwrap_or_default();
    Some(OciError::new(code, message).with_detail(detail))
}

/// The origin's path of a blob, for `repository` when given, with `confirm=upstream` when
/// `confirm`.
fn blob_path(digest: &Digest, repository: Option<&str>, confirm: bool) -> String {
    let mut path = format!("{BLOBS_PATH}{digest}");
    if let Some(repository) = repository {
        path.push_str(&format!("?{REPO_PARAM}={}", query::encode(repository)));
        if confirm {
            path.push_str(&format!("&{CONFIRM_PARAM}={CONFIRM_UPSTREAM}"));
        }
    }
    path
}

/// Largest error body read from an origin (for its OCI error).
const ORIGIN_ERROR_BYTES_MAX: usize = 64 << 10;

/// `?n=…&last=…` (either may be absent), values percent-encoded.
pub fn page_query(n: Option<usize>, last: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = n {
        parts.push(format!("n={n}"));
    }
    if let Some(last) = last {
        parts.push(format!("last={}", query::encode(last)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The query string of a `Link: <path?query>; rel="next"` header.
pub fn next_link_query(link: &str) -> Option<String> {
    link.split(',').find_map(|one| {
        let (target, params) = one.trim().split_once('>')?;
        let target = target.strip_prefix('<')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let (_, query) = target.split_once('?')?;
        Some(query.to_owned())
    })
}

/// The digest of `bytes` with `like`'s algorithm.
pub fn digest_like(like: &Digest, bytes: &[u8]) -> Digest {
    match like {
        Digest::Sha256(_) => Digest::sha256_of(bytes),
        Digest::Sha512(_) => Digest::sha512_of(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_queries() {
        assert_eq!(
            next_link_query("</internal/tags/a/b?n=2&last=x>; rel=\"next\"").as_deref(),
            Some("n=2&last=x")
        );
        assert_eq!(next_link_query("</x?n=1>; rel=\"prev\""), None);
        assert_eq!(next_link_query("garbage"), None);
        assert_eq!(page_query(None, None), "");
        assert_eq!(page_query(Some(3), Some("a/b")), "?n=3&last=a%2Fb");
        let error = OciError::new(ErrorCode::Denied, "too many");
        assert_eq!(parse_oci_error(error.to_json().as_bytes()), Some(error));
        assert_eq!(parse_oci_error(b"{}"), None);
        assert_eq!(parse_oci_error(br#"{"errors":[{"code":"NOPE"}]}"#), None);
    }
}
