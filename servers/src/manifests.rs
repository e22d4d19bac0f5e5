//! The read side of the distribution API that the proxy (push front) and the agent (pull
//! front) both serve, over one [`Registry`]: manifests by tag or digest, tag listings and
//! the catalog, referrers. One implementation, so the two fronts answer alike.
//!
//! - [`manifest_response`]: `GET|HEAD /v2/<name>/manifests/<reference>`. A tag is resolved
//!   at the build-index on every request (no cache: a retag is seen by the very next
//!   request); a digest must be a manifest of the repository (the build-index's membership
//!   record, written on every manifest push and for every tag), or, in a pull-through
//!   repository, one its upstream holds (the origin checks with the repository's storage
//!   backend: [`Registry::fetch_upstream_manifest`]), else 404 `MANIFEST_UNKNOWN`, whatever
//!   the origin stores. The bytes come from the origin, read for the repository (an origin
//!   that lacks them fills them from the repository's backend)
//!   (manifests are small blobs, read straight from an origin rather than through the
//!   swarm), checked against the digest. `Content-Type` is the tag record's media type, or
//!   for a digest the membership record's (the type it was pushed as). The request's `Accept` is ignored: a manifest is
//!   always served as what it is (a manifest list with its list type), never converted.
//!   `OCI-Subject` is set when the manifest has a `subject`.
//! - [`tags_list_response`], [`catalog_response`]: a listing page from the build-index, with
//!   its `Link` rewritten to the public path.
//! - [`referrers_response`]: `GET /v2/<name>/referrers/<digest>[?artifactType=…]` (OCI 1.1):
//!   an image index of the descriptors the build-index recorded for manifests of `<name>`
//!   whose `subject` is `<digest>` (the subject need not exist: no referrers is an empty
//!   index, never a 404); with `artifactType`, only those of that type, and
//!   `OCI-Filters-Applied: artifactType`. One page, at most
//!   [`REFERRERS_PER_SUBJECT_MAX`](crate::build_index::REFERRERS_PER_SUBJECT_MAX) entries.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LINK};
use http::{HeaderValue, Response, StatusCode};

use shoal_proto::Digest;

use crate::build_index::{OCI_INDEX, referenced_digests};
use crate::http::blob::{CONTENT_DIGEST_HEADER, header_value};
use crate::http::route::Reference;
use crate::http::{ErrorCode, LocalBody, OciError, query};
use crate::registry::Registry;

/// The subject of a manifest (OCI 1.1 referrers), on manifest pushes and reads.
pub const OCI_SUBJECT_HEADER: HeaderName = HeaderName::from_static("oci-subject");

/// The filters a referrers response applied (OCI 1.1).
pub const OCI_FILTERS_APPLIED_HEADER: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The referrers API's filter parameter.
pub const ARTIFACT_TYPE_PARAM: &str = "artifactType";

/// `GET` (or `HEAD`, without the body) of the manifest `name`/`reference`: 200 with
/// `Content-Type`, `Content-Length`, `Docker-Content-Digest` and, for a manifest with a
/// subject, `OCI-Subject`; 404 `MANIFEST_UNKNOWN` for an unknown tag or digest.
pub async fn manifest_response(
    registry: &Registry,
    name: &str,
    reference: &Reference<'_>,
    head: bool,
) -> Result<Response<LocalBody>, OciError> {
    let (digest, media_type, bytes) = match reference {
        Reference::Tag(tag) => {
            let Some(target) = registry
                .resolve_tag(name, tag)
                .await
                .map_err(|e| e.to_oci())?
            else {
                return Err(manifest_unknown(&format!("{name}:{tag}")));
            };
            (target.digest, Some(target.media_type), None)
        }
        Reference::Digest(digest) => {
            match registry
                .manifest_record(name, digest)
                .await
                .map_err(|e| e.to_oci())?
            {
                Some(record) => (*digest, Some(record.media_type), None),
                // Not pushed here: perhaps held by the repository's upstream.
                None => match registry
                    .fetch_upstream_manifest(name, digest)
                    .await
                    .map_err(|e| e.to_oci())?
                {
                    Some(bytes) => (*digest, None, Some(bytes)),
                    None => return Err(manifest_unknown(&format!("{name}@{digest}"))),
                },
            }
        }
    };
    let bytes = match bytes {
        Some(bytes) => bytes,
        None => registry
            .fetch_manifest(&digest, Some(name))
            .await
            .map_err(|e| e.to_oci())?
            .ok_or_else(|| manifest_unknown(&format!("{name}@{digest}")))?,
    };
    let media_type = media_type.unwrap_or_else(|| detect_media_type(&bytes));
    let subject = referenced_digests(&bytes, &media_type)
        .ok()
        .and_then(|references| references.subject);
    let len = bytes.len();
    let body = if head {
        LocalBody::empty()
    } else {
        LocalBody::full(bytes)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, header_value(media_type)?);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
    if let Some(subject) = subject {
        headers.insert(OCI_SUBJECT_HEADER, header_value(subject.to_string())?);
    }
    Ok(response)
}

/// `GET /v2/<name>/referrers/<subject>[?artifactType=T]`: 200 with an OCI image index of
/// `name`'s referrers of `subject` (only those of artifact type `T`, and
/// `OCI-Filters-Applied: artifactType`, when `T` is given).
pub async fn referrers_response(
    registry: &Registry,
    name: &str,
    subject: &Digest,
    query: &str,
) -> Result<Response<LocalBody>, OciError> {
    let artifact_type = query::param(query, ARTIFACT_TYPE_PARAM).filter(|t| !t.is_empty());
    let mut manifests = registry
        .referrers(name, subject)
        .await
        .map_err(|e| e.to_oci())?;
    if let Some(wanted) = &artifact_type {
        manifests.retain(|descriptor| {
            descriptor.get("artifactType").and_then(|t| t.as_str()) == Some(wanted.as_str())
        });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut response = Response::new(LocalBody::full(index.to_string()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if artifact_type.is_some() {
        headers.insert(
            OCI_FILTERS_APPLIED_HEADER,
            HeaderValue::from_static(ARTIFACT_TYPE_PARAM),
        );
    }
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/<digest>`: 405 `UNSUPPORTED`, saying why. Blobs are
/// content-addressed and shared by every repository and manifest that names them, so
/// deleting one needs a garbage collector that knows nothing references it any more;
/// there is none yet. Deleting manifests and tags is supported.
pub fn blob_delete_unsupported(digest: &Digest) -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        format!(
            "deleting blob {digest} is not supported: blobs are content-addressed and shared              between repositories and manifests, so removing one needs garbage collection,              which this registry does not have; delete the manifests or tags instead"
        ),
    )
}

/// `GET /v2/<name>/tags/list?n=&last=`: one page of `name`'s tags, with
/// `Link: </v2/<name>/tags/list?…>; rel="next"` when more follow; 404 `NAME_UNKNOWN` for a
/// repository without tags.
pub async fn tags_list_response(
    registry: &Registry,
    name: &str,
    query: &str,
) -> Result<Response<LocalBody>, OciError> {
    let (n, last) = page_params(query)?;
    let Some(listing) = registry
        .list_tags(name, n, last.as_deref())
        .await
        .map_err(|e| e.to_oci())?
    else {
        return Err(OciError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} has no tags"),
        ));
    };
    let mut response = json_response(StatusCode::OK, listing.body);
    if let Some(next) = listing.next_query {
        let link = format!("</v2/{name}/tags/list?{next}>; rel=\"next\"");
        response.headers_mut().insert(LINK, header_value(link)?);
    }
    Ok(response)
}

/// `GET /v2/_catalog?n=&last=`: one page of the repositories, `Link` as for tags.
pub async fn catalog_response(
    registry: &Registry,
    query: &str,
) -> Result<Response<LocalBody>, OciError> {
    let (n, last) = page_params(query)?;
    let listing = registry
        .list_repositories(n, last.as_deref())
        .await
        .map_err(|e| e.to_oci())?;
    let mut response = json_response(StatusCode::OK, listing.body);
    if let Some(next) = listing.next_query {
        let link = format!("</v2/_catalog?{next}>; rel=\"next\"");
        response.headers_mut().insert(LINK, header_value(link)?);
    }
    Ok(response)
}

/// `n` and `last` of a listing request (`SIZE_INVALID` for an `n` that is no number).
pub fn page_params(query: &str) -> Result<(Option<usize>, Option<String>), OciError> {
    let n = query::param(query, "n")
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                OciError::new(
                    ErrorCode::SizeInvalid,
                    format!("n must be a non-negative integer, not {n:?}"),
                )
            })
        })
        .transpose()?;
    Ok((n, query::param(query, "last")))
}

/// The media type of a stored manifest: its `mediaType`, else what its shape says
/// (`application/octet-stream` if it is no manifest we know).
pub fn detect_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    if let Ok(MediaType {
        media_type: Some(media_type),
    }) = serde_json::from_slice(bytes)
    {
        return media_type;
    }
    match referenced_digests(bytes, "") {
        Ok(references) => references.kind.media_type().to_owned(),
        Err(_) => "application/octet-stream".to_owned(),
    }
}

pub fn manifest_unknown(what: &str) -> OciError {
    OciError::new(ErrorCode::ManifestUnknown, format!("no manifest {what}"))
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<LocalBody> {
    let mut response = Response::new(LocalBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_detected() {
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert_eq!(
            detect_media_type(list),
            crate::build_index::DOCKER_MANIFEST_LIST
        );
        assert_eq!(detect_media_type(b"nope"), "application/octet-stream");
        assert_eq!(
            page_params("n=3&last=a").ok(),
            Some((Some(3), Some("a".into())))
        );
        assert!(page_params("n=x").is_err());
    }
}
