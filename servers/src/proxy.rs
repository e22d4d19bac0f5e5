//! The proxy: the OCI distribution **push** API. Blobs go to the origin and tags to the
//! build-index through their internal APIs ([`Registry`]); uploads are staged and verified
//! in the [`UploadStore`] first. One origin and one build-index for now (clusters later).
//!
//! - `GET /v2/` → 200 `{}`.
//! - `POST /v2/<name>/blobs/uploads/` → 202 with `Location`, `Docker-Upload-UUID`,
//!   `Range: 0-0`; with `?digest=` and a body, a monolithic upload (201); with
//!   `?mount=<digest>&from=<repo>`, 201 if the origin has the blob, else a new session (202).
//! - `PATCH …/uploads/<id>` → appends a chunk (`Content-Range` optional; a chunk that does not
//!   start at the upload's end gets 416 with `Range` of what was received); 202 + `Range`.
//! - `PUT …/uploads/<id>?digest=` (optional last chunk) → verified by the store, streamed to
//!   the origin, released; 201 with `Location: /v2/<name>/blobs/<digest>`.
//! - `GET …/uploads/<id>` → 204 + `Range`; `DELETE` → 204.
//! - `HEAD|GET /v2/<name>/blobs/<digest>` → the origin's answer (lengths, bytes, ranges).
//! - `PUT /v2/<name>/manifests/<reference>` → checked (bounded, parsed, every referenced
//!   blob and child manifest present on the origin, digest verified), stored on the origin as
//!   a blob, recorded at the build-index as a manifest of `<name>` (with, when it has a
//!   `subject`, its referrer descriptor), then, for a tag, the tag written to the
//!   build-index: a tag never points at a manifest whose references are missing or that
//!   its repository does not hold. 201 with `Docker-Content-Digest` and `OCI-Subject` when
//!   the manifest has a subject (whether or not the subject exists yet).
//! - `GET|HEAD /v2/<name>/manifests/<reference>` → tag → build-index → digest → origin; a
//!   digest `<name>` does not hold is 404.
//! - `GET /v2/<name>/referrers/<digest>[?artifactType=]` → the build-index's referrers.
//! - `DELETE /v2/<name>/manifests/<tag>` → 202 (the tag only); by digest → 202: the
//!   repository's tags naming it, its referrer record and its membership go (the bytes stay
//!   on the origin: other repositories may hold the same manifest); 404 if `<name>` does
//!   not hold it.
//! - `DELETE /v2/<name>/blobs/<digest>` → 405 `UNSUPPORTED`: blobs are shared between
//!   repositories and there is no garbage collection.
//! - `GET /v2/<name>/tags/list` and `GET /v2/_catalog` (`n`, `last`, `Link`) → build-index.
//!
//! Every failure is an OCI error; an origin or build-index that cannot be reached is 503
//! `UNAVAILABLE`.
//!
//! Request bodies stream to the blocking upload store without being buffered whole: frames
//! are read on the runtime and passed through a bounded channel ([`BRIDGE_FRAMES_MAX`]) to
//! the store's `Read` on a blocking thread. Manifests (at most `MANIFEST_LEN_MAX`) are read
//! into memory.
//!
//! Blobs are content-addressed and shared by every repository: a name is checked against
//! the grammar but does not restrict which blobs it can read or mount.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{
    ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderName, LOCATION, RANGE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use shoal_proto::Digest;

use crate::agent::{API_VERSION, API_VERSION_HEADER, CONTENT_DIGEST_HEADER};
use crate::build_index::{MANIFEST_LEN_MAX, ManifestError, ManifestRecord, referenced_digests};
use crate::http::client::{ClientError, read_body_bounded};
use crate::http::route::{Reference, Route, parse_digest};
use crate::http::{ErrorCode, Handler, LocalBody, OciError, method_not_allowed, query};
use crate::manifests::{self, json_response};
use crate::registry::{Registry, RegistryError, digest_like};
use crate::uploads::{CompletedBlob, NO_CHUNK, UploadError, UploadStore};

/// The upload session's id, as Docker expects it.
pub const UPLOAD_UUID_HEADER: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub use crate::manifests::OCI_SUBJECT_HEADER;

/// Body frames in flight between the runtime and the blocking upload store, per upload.
/// hyper's frames are at most its read buffer (a few hundred KiB), so an upload holds at
/// most a few MiB in memory whatever its size.
pub const BRIDGE_FRAMES_MAX: usize = 4;

/// Origin `HEAD` requests in flight at once while checking one manifest's references.
pub const REFERENCE_CHECKS_IN_FLIGHT_MAX: usize = 8;

/// The proxy's HTTP handler.
#[derive(Debug)]
pub struct Proxy {
    uploads: Arc<UploadStore>,
    registry: Registry,
}

/// A failed request: the OCI error, the status to send it with (the code's own unless
/// overridden: 413, 416, 507…), and extra headers (`Range` and `Location` on a 416).
/// Boxed: it travels up through every `?`, and the success path should stay small.
#[derive(Debug)]
struct Failure(Box<FailureParts>);

#[derive(Debug)]
struct FailureParts {
    error: OciError,
    status: StatusCode,
    headers: HeaderMap,
}

impl std::ops::Deref for Failure {
    type Target = FailureParts;
    fn deref(&self) -> &FailureParts {
        &self.0
    }
}

impl std::ops::DerefMut for Failure {
    fn deref_mut(&mut self) -> &mut FailureParts {
        &mut self.0
    }
}

impl From<OciError> for Failure {
    fn from(error: OciError) -> Failure {
        Failure(Box::new(FailureParts {
            status: error.code.status(),
            error,
            headers: HeaderMap::new(),
        }))
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Failure {
        Failure::from(error.to_oci())
    }
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure::from(OciError::new(code, message))
    }

    fn with_status(mut self, status: StatusCode) -> Failure {
        self.status = status;
        self
    }

    fn into_response(self) -> Response<LocalBody> {
        let FailureParts {
            error,
            status,
            headers,
        } = *self.0;
        let mut response = error.into_response();
        *response.status_mut() = status;
        response.headers_mut().extend(headers);
        response
    }
}

type Reply = Result<Response<LocalBody>, Failure>;

impl Handler for Proxy {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let (parts, body) = request.into_parts();
        let mut response = match self.route(&parts, body).await {
            Ok(response) => response,
            Err(failure) => {
                if failure.status.is_server_error() {
                    tracing::warn!(method = %parts.method, path = parts.uri.path(),
                        error = %failure.error, "request failed");
                }
                failure.into_response()
            }
        };
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
        response
    }
}

impl Proxy {
    pub fn new(uploads: Arc<UploadStore>, registry: Registry) -> Proxy {
        Proxy { uploads, registry }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn uploads(&self) -> &Arc<UploadStore> {
        &self.uploads
    }

    /// Removes idle upload sessions (on a blocking thread); the server calls it
    /// periodically. Returns how many went.
    pub async fn expire_idle_uploads(&self) -> usize {
        let uploads = Arc::clone(&self.uploads);
        let n = compio::runtime::spawn_blocking(move || {
            uploads.expire_idle(std::time::SystemTime::now())
        })
        .await
        .unwrap_or(0);
        if n > 0 {
            tracing::info!(n, "expired idle uploads");
        }
        n
    }

    async fn route(&self, parts: &Parts, body: Incoming) -> Reply {
        let method = &parts.method;
        let query = parts.uri.query().unwrap_or("");
        let read = method == Method::GET || method == Method::HEAD;
        let head = method == Method::HEAD;
        match Route::parse(parts.uri.path())? {
            Route::Base if read => Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}"))),
            Route::Catalog if method == Method::GET => self.catalog(query).await,
            Route::TagsList { name } if method == Method::GET => self.tags_list(name, query).await,
            Route::Blob { name, digest } if read => {
                self.blob(name, &digest, &parts.headers, head).await
            }
            Route::Blob { digest, .. } if method == Method::DELETE => {
                let mut failure = Failure::from(manifests::blob_delete_unsupported(&digest));
                failure
                    .headers
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                Err(failure)
            }
            Route::Referrers { name, digest } if method == Method::GET => {
                Ok(manifests::referrers_response(&self.registry, name, &digest, query).await?)
            }
            Route::Upload {
                name,
                session: None,
            } if method == Method::POST => {
                self.start_upload(name, query, &parts.headers, body).await
            }
            Route::Upload {
                name,
                session: Some(id),
            } => {
                self.check_session(name, id)?;
                match *method {
                    Method::PATCH => self.patch_upload(name, id, &parts.headers, body).await,
                    Method::PUT => {
                        self.finish_upload(name, id, query, &parts.headers, body)
                            .await
                    }
                    Method::GET => self.upload_status(name, id),
                    Method::DELETE => self.cancel_upload(id).await,
                    _ => Ok(method_not_allowed(method, "GET, PATCH, PUT, DELETE")),
                }
            }
            Route::Manifest { name, reference } => match *method {
                Method::GET | Method::HEAD => self.get_manifest(name, &reference, head).await,
                Method::PUT => {
                    self.put_manifest(name, &reference, &parts.headers, body)
                        .await
                }
                Method::DELETE => self.delete_manifest(name, &reference).await,
                _ => Ok(method_not_allowed(method, "GET, HEAD, PUT, DELETE")),
            },
            Route::Upload { .. } => Ok(method_not_allowed(method, "POST")),
            Route::Catalog | Route::TagsList { .. } | Route::Referrers { .. } => {
                Ok(method_not_allowed(method, "GET"))
            }
            Route::Base | Route::Blob { .. } => Ok(method_not_allowed(method, "GET, HEAD")),
        }
    }

    // ---- blobs ----

    /// `HEAD` asks the origins' stores only (a client checks a blob before pushing it); a
    /// `GET` is read for `name`, so an origin fills a miss from `name`'s storage backend.
    async fn blob(&self, name: &str, digest: &Digest, headers: &HeaderMap, head: bool) -> Reply {
        if head {
            let Some(len) = self.registry.blob_len(digest).await? else {
                return Err(blob_unknown(digest));
            };
            let mut response = Response::new(LocalBody::empty());
            let headers = response.headers_mut();
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
            return Ok(response);
        }
        let Some(upstream) = self
            .registry
            .get_blob(digest, Some(name), headers.get(RANGE))
            .await?
        else {
            return Err(blob_unknown(digest));
        };
        let (upstream_parts, upstream_body) = upstream.into_parts();
        let mut response =
            Response::new(LocalBody::stream(upstream_body.map_err(io::Error::other)));
        *response.status_mut() = upstream_parts.status;
        for name in [CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE] {
            if let Some(value) = upstream_parts.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
            .headers_mut()
            .insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
        Ok(response)
    }

    // ---- uploads ----

    async fn start_upload(
        &self,
        name: &str,
        query: &str,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Reply {
        if let Some(mount) = query::param(query, "mount") {
            let digest = parse_digest(&mount)?;
            if self.registry.blob_exists(&digest).await? {
                return blob_created(name, &digest);
            }
            // Not on the origin: the client uploads it through the session we open below.
        } else if let Some(digest) = query::param(query, "digest") {
            let digest = parse_digest(&digest)?;
            let len = content_length(headers)?;
            let uploads = Arc::clone(&self.uploads);
            let repo = name.to_owned();
            let completed = stream_into(body, move |reader| {
                uploads.put_monolithic(&repo, &digest, len, reader)
            })
            .await?
            .map_err(|e| upload_failure(e, None))?;
            return self.hand_off(name, completed).await;
        }
        let uploads = Arc::clone(&self.uploads);
        let repo = name.to_owned();
        let session = blocking(move || uploads.create(&repo))
            .await?
            .map_err(|e| upload_failure(e, None))?;
        let mut response = empty_response(StatusCode::ACCEPTED);
        let headers = response.headers_mut();
        headers.insert(LOCATION, header_value(upload_location(name, &session.id))?);
        headers.insert(UPLOAD_UUID_HEADER, header_value(session.id)?);
        headers.insert(RANGE, HeaderValue::from_static("0-0"));
        Ok(response)
    }

    /// The session exists and belongs to `name` (a session is only reachable through the
    /// repository it was opened for). Reads the store's in-memory table only.
    fn check_session(&self, name: &str, id: &str) -> Result<u64, Failure> {
        let status = self
            .uploads
            .status(id)
            .map_err(|e| upload_failure(e, None))?;
        if status.repo != name {
            return Err(Failure::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} is not an upload of {name}"),
            ));
        }
        Ok(status.offset)
    }

    fn upload_status(&self, name: &str, id: &str) -> Reply {
        let offset = self.check_session(name, id)?;
        session_response(StatusCode::NO_CONTENT, name, id, offset)
    }

    async fn patch_upload(
        &self,
        name: &str,
        id: &str,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Reply {
        let (start, len) = chunk_extent(headers)?;
        let uploads = Arc::clone(&self.uploads);
        let owned_id = id.to_owned();
        let offset = stream_into(body, move |reader| {
            uploads.append(&owned_id, start, len, reader)
        })
        .await?
        .map_err(|e| upload_failure(e, Some((name, id))))?;
        session_response(StatusCode::ACCEPTED, name, id, offset)
    }

    async fn finish_upload(
        &self,
        name: &str,
        id: &str,
        query: &str,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Reply {
        let Some(digest) = query::param(query, "digest") else {
            return Err(Failure::new(
                ErrorCode::DigestInvalid,
                "completing an upload needs ?digest=",
            ));
        };
        let digest = parse_digest(&digest)?;
        let uploads = Arc::clone(&self.uploads);
        let owned_id = id.to_owned();
        let no_body = body.size_hint().exact() == Some(0);
        let completed = if no_body {
            blocking(move || uploads.finish(&owned_id, &digest, NO_CHUNK)).await?
        } else {
            let (start, len) = chunk_extent(headers)?;
            stream_into(body, move |reader| {
                uploads.finish(&owned_id, &digest, Some((start, len, reader)))
            })
            .await?
        }
        .map_err(|e| upload_failure(e, Some((name, id))))?;
        self.hand_off(name, completed).await
    }

    async fn cancel_upload(&self, id: &str) -> Reply {
        let uploads = Arc::clone(&self.uploads);
        let owned_id = id.to_owned();
        blocking(move || uploads.cancel(&owned_id))
            .await?
            .map_err(|e| upload_failure(e, None))?;
        Ok(empty_response(StatusCode::NO_CONTENT))
    }

    /// Sends a verified blob to the origin, then releases it from the store (whether or not
    /// the origin took it: on failure the client uploads again).
    async fn hand_off(&self, name: &str, completed: CompletedBlob) -> Reply {
        let digest = completed.digest;
        let sent = self
            .registry
            .put_blob_file(&digest, Some(name), &completed.path, completed.len)
            .await;
        let uploads = Arc::clone(&self.uploads);
        match blocking(move || uploads.release(completed)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot release a completed upload"),
            Err(failure) => tracing::warn!(error = %failure.error, "release task failed"),
        }
        sent?;
        blob_created(name, &digest)
    }

    // ---- manifests ----

    async fn put_manifest(
        &self,
        name: &str,
        reference: &Reference<'_>,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Reply {
        let bytes =
            read_body_bounded(body, MANIFEST_LEN_MAX)
                .await
                .map_err(|error| match error {
                    ClientError::BodyTooLarge { max } => Failure::new(
                        ErrorCode::SizeInvalid,
                        format!("manifests are at most {max} bytes"),
                    )
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE),
                    error => Failure::new(
                        ErrorCode::ManifestInvalid,
                        format!("reading the manifest: {error}"),
                    ),
                })?;
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let references = referenced_digests(&bytes, media_type).map_err(manifest_invalid)?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = digest_like(expected, &bytes);
                if actual != *expected {
                    return Err(Failure::new(
                        ErrorCode::DigestInvalid,
                        format!("the manifest hashes to {actual}, not {expected}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };

        // Everything it references first: layers, config, child manifests.
        let needed: Vec<Digest> = references
            .blobs
            .iter()
            .chain(references.manifests.iter())
            .copied()
            .collect();
        let registry = &self.registry;
        let mut checks = futures_util::stream::iter(
            needed
                .into_iter()
                .map(|d| async move { (d, registry.blob_exists(&d).await) }),
        )
        .buffer_unordered(REFERENCE_CHECKS_IN_FLIGHT_MAX);
        while let Some((needed, exists)) = checks.next().await {
            if !exists? {
                return Err(Failure::from(
                    OciError::new(
                        ErrorCode::ManifestBlobUnknown,
                        format!("the manifest references {needed}, which was not pushed"),
                    )
                    .with_detail(serde_json::json!({ "digest": needed.to_string() })),
                )
                .with_status(StatusCode::BAD_REQUEST));
            }
        }
        drop(checks);

        let record = ManifestRecord::of_manifest(digest, bytes.len(), &references);
        record.validate().map_err(|reason| {
            Failure::new(
                ErrorCode::ManifestInvalid,
                format!("manifest {digest}: {reason}"),
            )
        })?;
        self.registry
            .put_blob_bytes(&digest, Some(name), bytes)
            .await?;
        // The repository holds it (and its subject lists it) before a tag may name it.
        self.registry.put_manifest_record(name, &record).await?;
        if let Reference::Tag(tag) = reference {
            self.registry
                .put_tag(name, tag, &digest, references.kind.media_type(), None)
                .await?;
        }
        let mut response = empty_response(StatusCode::CREATED);
        let headers = response.headers_mut();
        headers.insert(
            LOCATION,
            header_value(format!("/v2/{name}/manifests/{digest}"))?,
        );
        headers.insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
        if let Some(subject) = references.subject {
            headers.insert(OCI_SUBJECT_HEADER, header_value(subject.to_string())?);
        }
        Ok(response)
    }

    async fn get_manifest(&self, name: &str, reference: &Reference<'_>, head: bool) -> Reply {
        Ok(manifests::manifest_response(&self.registry, name, reference, head).await?)
    }

    async fn delete_manifest(&self, name: &str, reference: &Reference<'_>) -> Reply {
        match reference {
            Reference::Tag(tag) => {
                if !self.registry.delete_tag(name, tag).await? {
                    return Err(manifest_unknown(&format!("{name}:{tag}")));
                }
                Ok(empty_response(StatusCode::ACCEPTED))
            }
            Reference::Digest(digest) => {
                if !self.registry.delete_manifest(name, digest).await? {
                    return Err(manifest_unknown(&format!("{name}@{digest}")));
                }
                Ok(empty_response(StatusCode::ACCEPTED))
            }
        }
    }

    // ---- listings ----

    async fn tags_list(&self, name: &str, query: &str) -> Reply {
        Ok(manifests::tags_list_response(&self.registry, name, query).await?)
    }

    async fn catalog(&self, query: &str) -> Reply {
        Ok(manifests::catalog_response(&self.registry, query).await?)
    }
}

/// Runs `f` with a blocking [`Read`] over `body` on a blocking thread, while this task reads
/// the body's frames and passes them on through a channel of [`BRIDGE_FRAMES_MAX`] frames.
/// If `f` returns before the body ends (an error, a bound), the rest of the body is not read.
async fn stream_into<T: Send + 'static>(
    mut body: Incoming,
    f: impl FnOnce(BodyReader) -> T + Send + 'static,
) -> Result<T, Failure> {
    let (sender, receiver) = flume::bounded::<io::Result<Bytes>>(BRIDGE_FRAMES_MAX);
    let task = compio::runtime::spawn_blocking(move || {
        f(BodyReader {
            receiver,
            current: Bytes::new(),
        })
    });
    while let Some(frame) = body.frame().await {
        let item = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => Ok(data),
                Err(_) => continue, // trailers
            },
            Err(error) => Err(io::Error::other(error)),
        };
        let failed = item.is_err();
        if sender.send_async(item).await.is_err() || failed {
            break; // the store stopped reading, or the client went away
        }
    }
    drop(sender);
    task.await
        .map_err(|_| Failure::new(ErrorCode::Unknown, "upload task panicked"))
}

/// The blocking side of [`stream_into`]: request-body frames as a [`Read`].
#[derive(Debug)]
struct BodyReader {
    receiver: flume::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.recv() {
                Ok(Ok(data)) => self.current = data,
                Ok(Err(error)) => return Err(error),
                Err(flume::RecvError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Runs blocking store work off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
    compio::runtime::spawn_blocking(f)
        .await
        .map_err(|_| Failure::new(ErrorCode::Unknown, "upload task panicked"))
}

/// An upload store error as a response: its code and status, plus `Location` and `Range`
/// on a 416 so the client can resume from what was received.
fn upload_failure(error: UploadError, session: Option<(&str, &str)>) -> Failure {
    let code = ErrorCode::ALL
        .into_iter()
        .find(|code| code.as_str() == error.oci_code())
        .unwrap_or(ErrorCode::Unknown);
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut failure = Failure::new(code, error.to_string()).with_status(status);
    if let (UploadError::RangeInvalid { offset, .. }, Some((name, id))) = (&error, session) {
        if let Ok(location) = HeaderValue::try_from(upload_location(name, id)) {
            failure.headers.insert(LOCATION, location);
        }
        if let Ok(range) = HeaderValue::try_from(range_value(*offset)) {
            failure.headers.insert(RANGE, range);
        }
    }
    failure
}

/// `Range` of an upload's received bytes: `0-(offset-1)`, and `0-0` for none (as the
/// distribution registry answers).
fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202/204 for a session: `Location`, `Range`, `Docker-Upload-UUID`.
fn session_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Reply {
    let mut response = empty_response(status);
    let headers = response.headers_mut();
    headers.insert(LOCATION, header_value(upload_location(name, id))?);
    headers.insert(RANGE, header_value(range_value(offset))?);
    headers.insert(UPLOAD_UUID_HEADER, header_value(id.to_owned())?);
    Ok(response)
}

/// 201 for a blob now on the origin.
fn blob_created(name: &str, digest: &Digest) -> Reply {
    let mut response = empty_response(StatusCode::CREATED);
    let headers = response.headers_mut();
    headers.insert(
        LOCATION,
        header_value(format!("/v2/{name}/blobs/{digest}"))?,
    );
    headers.insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
    Ok(response)
}

/// A chunk's `(start, len)`: `Content-Range: <start>-<end>` (optional; a `bytes ` or
/// `bytes=` prefix is tolerated) and `Content-Length`, which must agree when both are given.
fn chunk_extent(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>), Failure> {
    let len = content_length(headers)?;
    let Some(range) = headers.get(CONTENT_RANGE) else {
        return Ok((None, len));
    };
    let invalid = || {
        Failure::new(
            ErrorCode::RangeInvalid,
            "Content-Range must be <start>-<end> (inclusive byte offsets)",
        )
    };
    let text = range.to_str().map_err(|_| invalid())?;
    let text = text
        .strip_prefix("bytes ")
        .or_else(|| text.strip_prefix("bytes="))
        .unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    let range_len = end - start + 1;
    if len.is_some_and(|len| len != range_len) {
        return Err(Failure::new(
            ErrorCode::SizeInvalid,
            format!("Content-Range covers {range_len} bytes but Content-Length differs"),
        ));
    }
    Ok((Some(start), Some(range_len)))
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Failure> {
    headers
        .get(CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Failure::new(ErrorCode::SizeInvalid, "invalid Content-Length"))
        })
        .transpose()
}

fn manifest_invalid(error: ManifestError) -> Failure {
    Failure::new(ErrorCode::ManifestInvalid, error.to_string())
}

fn manifest_unknown(what: &str) -> Failure {
    Failure::from(manifests::manifest_unknown(what))
}

fn blob_unknown(digest: &Digest) -> Failure {
    Failure::from(
        OciError::new(ErrorCode::BlobUnknown, format!("blob {digest} is unknown"))
            .with_detail(serde_json::json!({ "digest": digest.to_string() })),
    )
}

fn empty_response(status: StatusCode) -> Response<LocalBody> {
    let mut response = Response::new(LocalBody::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    response
}

/// A header value from text we built (digests, paths of valid names): always valid.
fn header_value(text: String) -> Result<HeaderValue, Failure> {
    HeaderValue::try_from(text)
        .map_err(|e| Failure::new(ErrorCode::Unknown, format!("bad header value: {e}")))
}

#[cfg(test)]
mod tests;
