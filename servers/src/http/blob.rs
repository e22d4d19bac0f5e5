//! A blob's `GET`/`HEAD` response, shared by every server that serves blobs from an
//! [`Engine`] (the agent, the origin): one byte range at most (see [`super::range`]), with
//! `Content-Length`, `Docker-Content-Digest`, `ETag`, `Accept-Ranges`, and 206/416 as the
//! range asks. Also the mapping of the engine's failures to OCI errors.

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use shoal_engine::{Engine, EngineError};
use shoal_proto::Digest;

use super::range::{self, RangeRequest};
use super::{ErrorCode, LocalBody, OciError};

/// The digest of the content sent (or stored).
pub const CONTENT_DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");

/// The response to `GET` (or `HEAD`, `head`) of `digest`, `blob_len` bytes long, honouring
/// one `Range` in `headers`. A `GET` opens the blob through [`Engine::open`]; the caller
/// decides beforehand whether that may download (the agent) or must only read the store
/// (the origin checks `store().has_blob` first).
pub async fn blob_response(
    engine: &Engine,
    digest: &Digest,
    blob_len: u64,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<LocalBody>, OciError> {
    let requested = headers.get(http::header::RANGE).map(HeaderValue::as_bytes);
    let (status, range) = match range::resolve(requested, blob_len) {
        RangeRequest::Whole => (StatusCode::OK, 0..blob_len),
        RangeRequest::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        RangeRequest::Unsatisfiable => {
            let mut response = OciError::new(
                ErrorCode::RangeInvalid,
                format!("no byte of {digest} ({blob_len} bytes) is in the requested range"),
            )
            .into_response();
            response.headers_mut().insert(
                CONTENT_RANGE,
                header_value(range::content_range_unsatisfied(blob_len))?,
            );
            return Ok(response);
        }
    };
    let body = if head {
        LocalBody::empty()
    } else {
        let stream = engine
            .open(digest, Some(range.clone()))
            .await
            .map_err(engine_error)?;
        LocalBody::blob(stream)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    headers.insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
    headers.insert(ETAG, header_value(format!("\"{digest}\""))?);
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            CONTENT_RANGE,
            header_value(range::content_range(&range, blob_len))?,
        );
    }
    Ok(response)
}

/// The engine's failures as OCI errors: unknown blobs are 404, unreachable trackers 503
/// (retry), too many downloads at once 429, anything else 500.
pub fn engine_error(error: EngineError) -> OciError {
    match error {
        EngineError::NotFound { digest } => OciError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is unknown to the trackers"),
        )
        .with_detail(serde_json::json!({ "digest": digest.to_string() })),
        EngineError::Tracker(_) | EngineError::ShutDown => {
            OciError::new(ErrorCode::Unavailable, error.to_string())
        }
        EngineError::TooManyBlobs { .. } => {
            OciError::new(ErrorCode::TooManyRequests, error.to_string())
        }
        EngineError::Config(_)
        | EngineError::Startup(_)
        | EngineError::Store(_)
        | EngineError::Failed { .. }
        | EngineError::Removed { .. }
        | EngineError::Input { .. } => OciError::new(ErrorCode::Unknown, error.to_string()),
    }
}

/// A header value from text we built (digests, numbers, paths of validated names): always
/// valid, checked anyway.
pub fn header_value(text: String) -> Result<HeaderValue, OciError> {
    HeaderValue::try_from(text)
        .map_err(|e| OciError::new(ErrorCode::Unknown, format!("bad header value: {e}")))
}
