//! The OCI distribution API's paths: which endpoint a request names, with its repository
//! name, digest or tag checked against the spec's grammars.
//!
//! Plain string splitting on an already parsed URI path (hyper parsed the request). Nothing is
//! percent-decoded: `%` is in none of the grammars, so an encoded name or digest is refused
//! like any other malformed one, and so is every path-traversal spelling (`..`, `%2e%2e`,
//! empty segments), which the name grammar cannot produce.

use shoal_proto::Digest;

use super::error::{ErrorCode, OciError};

/// The longest repository name accepted. The spec lets registries bound it; clients commonly
/// limit `host/name` to 255 characters.
pub const NAME_LEN_MAX: usize = crate::build_index::REPOSITORY_LEN_MAX;

/// The longest tag (the spec's grammar: one leading character, then up to 127).
pub const TAG_LEN_MAX: usize = crate::build_index::TAG_LEN_MAX;

/// An endpoint of the distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/` (or `/v2`): the API version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: &'a str, digest: Digest },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        name: &'a str,
        reference: Reference<'a>,
    },
    /// `/v2/<name>/tags/list`.
    TagsList { name: &'a str },
    /// `/v2/<name>/referrers/<digest>` (OCI 1.1): the manifests whose `subject` is `digest`.
    Referrers { name: &'a str, digest: Digest },
    /// `/v2/<name>/blobs/uploads/` (`session` `None`) or `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        name: &'a str,
        session: Option<&'a str>,
    },
}

/// What a manifest path names it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    Tag(&'a str),
    Digest(Digest),
}

impl<'a> Route<'a> {
    /// The endpoint `path` names. Errors: `NAME_UNKNOWN` (404) for a path that is no
    /// endpoint, `NAME_INVALID` for a bad repository name, `DIGEST_INVALID` for a bad
    /// digest, `MANIFEST_INVALID` for a reference that is neither a tag nor a digest.
    pub fn parse(path: &'a str) -> Result<Route<'a>, OciError> {
        let unknown = || OciError::new(ErrorCode::NameUnknown, format!("no endpoint at {path}"));
        let Some(rest) = path.strip_prefix("/v2") else {
            return Err(unknown());
        };
        if rest.is_empty() || rest == "/" {
            return Ok(Route::Base);
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Err(unknown());
        };
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let mut parts = rest.rsplitn(3, '/');
        let (Some(last), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        // The name first: a traversal attempt is NAME_INVALID whatever follows it.
        let name = match kind {
            "uploads" => name.strip_suffix("/blobs").ok_or_else(unknown)?,
            "blobs" | "manifests" | "referrers" => name,
            "tags" if last == "list" => name,
            _ => return Err(unknown()),
        };
        check_name(name)?;
        Ok(match kind {
            "uploads" => Route::Upload {
                name,
                session: (!last.is_empty()).then_some(last),
            },
            "blobs" => Route::Blob {
                name,
                digest: parse_digest(last)?,
            },
            "manifests" => Route::Manifest {
                name,
                reference: parse_reference(last)?,
            },
            "referrers" => Route::Referrers {
                name,
                digest: parse_digest(last)?,
            },
            _ => Route::TagsList { name },
        })
    }

    /// The repository name, for the endpoints that have one.
    pub fn name(&self) -> Option<&'a str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Blob { name, .. }
            | Route::Manifest { name, .. }
            | Route::TagsList { name }
            | Route::Referrers { name, .. }
            | Route::Upload { name, .. } => Some(name),
        }
    }
}

/// A digest in a path: `DIGEST_INVALID` unless `shoal_proto::Digest::parse` accepts it
/// (sha256 or sha512, lowercase hex).
pub fn parse_digest(text: &str) -> Result<Digest, OciError> {
    Digest::parse(text).map_err(|error| {
        OciError::new(ErrorCode::DigestInvalid, error.to_string())
            .with_detail(serde_json::json!({ "digest": truncated(text) }))
    })
}

/// A manifest reference: a digest if it has a `:` (tags cannot), else a tag.
pub fn parse_reference(text: &str) -> Result<Reference<'_>, OciError> {
    if text.contains(':') {
        return parse_digest(text).map(Reference::Digest);
    }
    if is_valid_tag(text) {
        return Ok(Reference::Tag(text));
    }
    Err(OciError::new(
        ErrorCode::ManifestInvalid,
        format!("{:?} is neither a tag nor a digest", truncated(text)),
    ))
}

/// `NAME_INVALID` unless `name` is a valid repository name.
pub fn check_name(name: &str) -> Result<(), OciError> {
    if is_valid_name(name) {
        return Ok(());
    }
    Err(OciError::new(
        ErrorCode::NameInvalid,
        format!(
            "invalid repository name {:?}: path components of [a-z0-9] separated by \
             '.', '_', '__' or dashes, at most {NAME_LEN_MAX} characters",
            truncated(name)
        ),
    ))
}

/// The spec's repository name grammar,
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, and at most
/// [`NAME_LEN_MAX`] characters.
pub fn is_valid_name(name: &str) -> bool {
    crate::build_index::validate_repository(name).is_ok()
}

/// The spec's tag grammar, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    crate::build_index::validate_tag(tag).is_ok()
}

/// Client input quoted in an error message, cut to a bounded length.
fn truncated(text: &str) -> &str {
    const QUOTED_LEN_MAX: usize = 300;
    if text.len() <= QUOTED_LEN_MAX {
        return text;
    }
    let mut end = QUOTED_LEN_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn digest() -> Digest {
        Digest::parse(SHA).unwrap()
    }

    fn check(path: &str, expected: Result<Route<'_>, ErrorCode>) {
        let parsed = Route::parse(path).map_err(|e| e.code);
        assert_eq!(parsed, expected, "{path}");
    }

    #[test]
    fn endpoints() {
        check("/v2/", Ok(Route::Base));
        check("/v2", Ok(Route::Base));
        check("/v2/_catalog", Ok(Route::Catalog));
        check(
            &format!("/v2/library/ubuntu/blobs/{SHA}"),
            Ok(Route::Blob {
                name: "library/ubuntu",
                digest: digest(),
            }),
        );
        check(
            &format!("/v2/a/blobs/{SHA}"),
            Ok(Route::Blob {
                name: "a",
                digest: digest(),
            }),
        );
        // A repository may have a component called "blobs": the endpoint is at the end.
        check(
            &format!("/v2/x/blobs/blobs/{SHA}"),
            Ok(Route::Blob {
                name: "x/blobs",
                digest: digest(),
            }),
        );
        check(
            "/v2/a/b/c/manifests/latest",
            Ok(Route::Manifest {
                name: "a/b/c",
                reference: Reference::Tag("latest"),
            }),
        );
        check(
            &format!("/v2/a/manifests/{SHA}"),
            Ok(Route::Manifest {
                name: "a",
                reference: Reference::Digest(digest()),
            }),
        );
        check("/v2/a/b/tags/list", Ok(Route::TagsList { name: "a/b" }));
        check(
            &format!("/v2/a/b/referrers/{SHA}"),
            Ok(Route::Referrers {
                name: "a/b",
                digest: digest(),
            }),
        );
        // A repository may be called "referrers" too.
        check(
            &format!("/v2/referrers/referrers/{SHA}"),
            Ok(Route::Referrers {
                name: "referrers",
                digest: digest(),
            }),
        );
        check(
            "/v2/a/blobs/uploads/",
            Ok(Route::Upload {
                name: "a",
                session: None,
            }),
        );
        check(
            "/v2/a/b/blobs/uploads/3f2a-11",
            Ok(Route::Upload {
                name: "a/b",
                session: Some("3f2a-11"),
            }),
        );
    }

    #[test]
    fn unknown_paths() {
        for path in [
            "/",
            "/v1/",
            "/v2x",
            "/v2/a",
            "/v2/a/b",
            "/v2/a/things/x",
            "/v2/a/tags/all",
            "/v2/a/uploads/x",
            "/favicon.ico",
        ] {
            check(path, Err(ErrorCode::NameUnknown));
        }
    }

    #[test]
    fn traversal_and_bad_names_are_name_invalid() {
        for name in [
            "..",
            "a/..",
            "../a",
            "a/../../b",
            "%2e%2e",
            "a/%2E%2E/b",
            "a//b",
            "/a",
            "a/",
            ".",
            "A",
            "a.",
            "_a",
            "a..b",
            "a___b",
            "a-_b",
            "a%2fb",
            "a b",
        ] {
            check(
                &format!("/v2/{name}/blobs/{SHA}"),
                Err(ErrorCode::NameInvalid),
            );
            check(
                &format!("/v2/{name}/referrers/{SHA}"),
                Err(ErrorCode::NameInvalid),
            );
        }
        check("/v2//blobs/uploads/", Err(ErrorCode::NameInvalid));
        let long = format!("/v2/{}/tags/list", "a".repeat(NAME_LEN_MAX + 1));
        check(&long, Err(ErrorCode::NameInvalid));
        let longest = "a".repeat(NAME_LEN_MAX);
        check(
            &format!("/v2/{longest}/tags/list"),
            Ok(Route::TagsList { name: &longest }),
        );
    }

    #[test]
    fn names() {
        for name in [
            "a",
            "0",
            "library/ubuntu",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a1.b2_c3__d4-e5/f",
        ] {
            assert!(is_valid_name(name), "{name}");
        }
        assert!(!is_valid_name(""));
    }

    #[test]
    fn digests_in_paths() {
        for bad in [
            "sha256:abc",
            "sha256%3A0123",
            "md5:0123456789abcdef0123456789abcdef",
            "SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "",
            "latest",
        ] {
            check(&format!("/v2/a/blobs/{bad}"), Err(ErrorCode::DigestInvalid));
        }
        check("/v2/a/manifests/sha256:abc", Err(ErrorCode::DigestInvalid));
        check("/v2/a/referrers/sha256:abc", Err(ErrorCode::DigestInvalid));
        check("/v2/a/referrers/latest", Err(ErrorCode::DigestInvalid));
        check("/v2/a/referrers/..", Err(ErrorCode::DigestInvalid));
    }

    #[test]
    fn tags() {
        for tag in [
            "latest",
            "v1.2.3",
            "_x",
            "A-b_c.d",
            &"t".repeat(TAG_LEN_MAX),
        ] {
            assert!(is_valid_tag(tag), "{tag}");
        }
        for tag in ["", ".x", "-x", "a/b", "a+b", &"t".repeat(TAG_LEN_MAX + 1)] {
            assert!(!is_valid_tag(tag), "{tag}");
        }
        check("/v2/a/manifests/-x", Err(ErrorCode::ManifestInvalid));
    }
}
