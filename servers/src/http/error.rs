//! The OCI distribution error model: a code from the spec's fixed list, mapped to its HTTP
//! status, rendered as `{"errors":[{"code":…,"message":…,"detail":…}]}`.
//!
//! Every error response of every Shoal HTTP server is built here, so the mapping from a
//! failure to a status and a code lives in one place.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::body::LocalBody;

/// The error codes of the OCI distribution spec, plus the few Shoal needs that the spec
/// leaves to registries (`RANGE_INVALID`, `UNKNOWN`, `UNAVAILABLE`, as the CNCF distribution
/// registry names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The blob is unknown to the registry.
    BlobUnknown,
    /// The upload failed and cannot go on.
    BlobUploadInvalid,
    /// The upload session is unknown.
    BlobUploadUnknown,
    /// The digest is malformed, unsupported, or does not match the content.
    DigestInvalid,
    /// A manifest references a blob the registry does not have.
    ManifestBlobUnknown,
    /// The manifest (or the reference naming it) is invalid.
    ManifestInvalid,
    /// No manifest by that tag or digest.
    ManifestUnknown,
    /// The repository name does not match the grammar.
    NameInvalid,
    /// The repository, or the endpoint, is unknown.
    NameUnknown,
    /// A length does not match the content.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Access denied.
    Denied,
    /// The operation is not supported here (a push to an agent, a method an endpoint lacks).
    Unsupported,
    /// Rate limited.
    TooManyRequests,
    /// A `Range` that no byte of the blob satisfies.
    RangeInvalid,
    /// Something failed on our side.
    Unknown,
    /// A service we depend on (a tracker, a peer) cannot answer now; retry later.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::RangeInvalid,
        ErrorCode::Unknown,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status the code is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One OCI error: what every failed request answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub code: ErrorCode,
    /// For people: what went wrong, naming the offending value.
    pub message: String,
    /// For programs: a JSON value (`null` when there is nothing to add).
    pub detail: serde_json::Value,
}

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> OciError {
        self.detail = detail;
        self
    }

    /// The JSON body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": self.detail,
            }]
        })
        .to_string()
    }

    /// The whole response: the code's status, `Content-Type: application/json`, the JSON
    /// body (which hyper leaves out for `HEAD`).
    pub fn into_response(self) -> Response<LocalBody> {
        let body = Bytes::from(self.to_json());
        let mut response = Response::new(LocalBody::full(body));
        *response.status_mut() = self.code.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// The same response with another status, for the few failures whose status the spec
    /// fixes apart from the code (411 and 413 with `SIZE_INVALID`, 409 for a tag's
    /// compare-and-set conflict).
    pub fn into_response_with_status(self, status: StatusCode) -> Response<LocalBody> {
        let mut response = self.into_response();
        *response.status_mut() = status;
        response
    }
}

/// 405 `UNSUPPORTED` with `Allow: allow`.
pub fn method_not_allowed(method: &Method, allow: &'static str) -> Response<LocalBody> {
    let mut response = OciError::new(
        ErrorCode::Unsupported,
        format!("{method} is not supported here (allowed: {allow})"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for OciError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn codes_map_to_the_spec_statuses() {
        let check = |code: ErrorCode, wire: &str, status: u16| {
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.status().as_u16(), status, "{wire}");
        };
        check(ErrorCode::BlobUnknown, "BLOB_UNKNOWN", 404);
        check(ErrorCode::BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400);
        check(ErrorCode::BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404);
        check(ErrorCode::DigestInvalid, "DIGEST_INVALID", 400);
        check(ErrorCode::ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 404);
        check(ErrorCode::ManifestInvalid, "MANIFEST_INVALID", 400);
        check(ErrorCode::ManifestUnknown, "MANIFEST_UNKNOWN", 404);
        check(ErrorCode::NameInvalid, "NAME_INVALID", 400);
        check(ErrorCode::NameUnknown, "NAME_UNKNOWN", 404);
        check(ErrorCode::SizeInvalid, "SIZE_INVALID", 400);
        check(ErrorCode::Unauthorized, "UNAUTHORIZED", 401);
        check(ErrorCode::Denied, "DENIED", 403);
        check(ErrorCode::Unsupported, "UNSUPPORTED", 405);
        check(ErrorCode::TooManyRequests, "TOOMANYREQUESTS", 429);
        check(ErrorCode::RangeInvalid, "RANGE_INVALID", 416);
        check(ErrorCode::Unknown, "UNKNOWN", 500);
        check(ErrorCode::Unavailable, "UNAVAILABLE", 503);
        let mut wires: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        wires.sort_unstable();
        wires.dedup();
        assert_eq!(wires.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn renders_the_errors_envelope() {
        let error = OciError::new(ErrorCode::BlobUnknown, "sha256:ab… is not here")
            .with_detail(serde_json::json!({"digest": "sha256:ab"}));
        let value: serde_json::Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"errors": [{
                "code": "BLOB_UNKNOWN",
                "message": "sha256:ab… is not here",
                "detail": {"digest": "sha256:ab"},
            }]})
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
