//! Validators for repository names and tags (OCI distribution-spec grammar).
//!
//! These names become paths under the tag store's root, so the validators are what keeps a
//! request inside it: a valid repository is `/`-separated components of `[a-z0-9]` runs joined
//! by `.`, `_`, `__` or `-+`, so no component is empty, `.`, `..` or starts with `.` or `_`;
//! a valid tag starts with `[a-zA-Z0-9_]` and holds no `/`, so it is one plain file name that
//! never starts with `.` (the prefix of the store's temporary files).

/// Longest repository name (OCI distribution-spec: clients and registries should accept at
/// least 255 characters; we accept at most that).
pub const REPOSITORY_LEN_MAX: usize = 255;

/// Longest tag (the grammar's `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub const TAG_LEN_MAX: usize = 128;

/// Most characters of an offending name quoted in an error message.
const QUOTED_LEN_MAX: usize = 64;

/// Why a string is not a valid repository name or tag. Messages quote the offending value
/// (its first [`QUOTED_LEN_MAX`] characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    RepositoryEmpty,
    #[error("repository name is {len} bytes, more than {REPOSITORY_LEN_MAX}")]
    RepositoryTooLong { len: usize },
    #[error(
        "repository name {name:?} does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/…)* \
         (at byte {position})"
    )]
    RepositoryInvalid { name: String, position: usize },
    #[error("tag is empty")]
    TagEmpty,
    #[error("tag is {len} bytes, more than {TAG_LEN_MAX}")]
    TagTooLong { len: usize },
    #[error("tag {tag:?} does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}} (at byte {position})")]
    TagInvalid { tag: String, position: usize },
}

/// Checks `name` against the OCI repository-name grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`REPOSITORY_LEN_MAX`] bytes.
pub fn validate_repository(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::RepositoryEmpty);
    }
    if name.len() > REPOSITORY_LEN_MAX {
        return Err(NameError::RepositoryTooLong { len: name.len() });
    }
    let invalid = |position: usize| NameError::RepositoryInvalid {
        name: quote(name),
        position,
    };
    let mut component_start = 0;
    for component in name.split('/') {
        if let Err(offset) = check_component(component) {
            return Err(invalid(component_start + offset));
        }
        component_start += component.len() + 1;
    }
    Ok(())
}

/// Checks one path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
/// On failure, the byte offset of the first character that cannot be accepted (the length
/// when the component ends too early: empty, or ends with a separator).
pub(crate) fn check_component(component: &str) -> Result<(), usize> {
    // The separator run since the last alphanumeric character: None at the start (no
    // separator allowed yet), Some("") after an alphanumeric.
    let bytes = component.as_bytes();
    let mut run_start: Option<usize> = None;
    let mut seen_alnum = false;
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' => {
                if let Some(start) = run_start.take()
                    && !separator_is_valid(&bytes[start..i])
                {
                    return Err(start);
                }
                seen_alnum = true;
            }
            b'.' | b'_' | b'-' if seen_alnum => {
                if run_start.is_none() {
                    run_start = Some(i);
                }
            }
            _ => return Err(i),
        }
    }
    if !seen_alnum || run_start.is_some() {
        return Err(component.len());
    }
    Ok(())
}

/// `\.|_|__|-+`.
fn separator_is_valid(separator: &[u8]) -> bool {
    matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-')
}

/// Checks `tag` against the OCI tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    if tag.is_empty() {
        return Err(NameError::TagEmpty);
    }
    if tag.len() > TAG_LEN_MAX {
        return Err(NameError::TagTooLong { len: tag.len() });
    }
    for (i, &byte) in tag.as_bytes().iter().enumerate() {
        let ok = match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => true,
            b'.' | b'-' => i > 0,
            _ => false,
        };
        if !ok {
            return Err(NameError::TagInvalid {
                tag: quote(tag),
                position: i,
            });
        }
    }
    Ok(())
}

/// The first [`QUOTED_LEN_MAX`] characters of `text`, for an error message.
pub(crate) fn quote(text: &str) -> String {
    text.chars().take(QUOTED_LEN_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_repository(name: &str, valid: bool) {
        let result = validate_repository(name);
        assert_eq!(result.is_ok(), valid, "{name:?}: {result:?}");
    }

    fn check_tag(tag: &str, valid: bool) {
        let result = validate_tag(tag);
        assert_eq!(result.is_ok(), valid, "{tag:?}: {result:?}");
    }

    #[test]
    fn repository_names() {
        for name in [
            "a",
            "ubuntu",
            "library/ubuntu",
            "a/b/c/d",
            "my-app",
            "my--app",
            "my---app",
            "my.app",
            "my_app",
            "my__app",
            "a0.b1_c2__d3-e4",
            "0",
            "9to5/x",
            "gcr.io/project/image",
        ] {
            check_repository(name, true);
        }
        for name in [
            "",
            ".",
            "..",
            "../etc",
            "a/../b",
            "a/./b",
            "/a",
            "a/",
            "a//b",
            "Ubuntu",
            "library/Ubuntu",
            ".a",
            "_a",
            "-a",
            "a.",
            "a_",
            "a-",
            "a..b",
            "a___b",
            "a._b",
            "a-_b",
            "a_-b",
            "a.-b",
            "a b",
            "a:b",
            "a@b",
            "a\\b",
            "a\0b",
            "é",
            "_tags",
            "a/_tags",
        ] {
            check_repository(name, false);
        }
        check_repository(&"a".repeat(REPOSITORY_LEN_MAX), true);
        check_repository(&format!("{}a", "a/".repeat(127)), true);
        assert_eq!(
            validate_repository(&"a".repeat(REPOSITORY_LEN_MAX + 1)),
            Err(NameError::RepositoryTooLong {
                len: REPOSITORY_LEN_MAX + 1
            })
        );
    }

    #[test]
    fn repository_error_positions() {
        let position = |name: &str| match validate_repository(name) {
            Err(NameError::RepositoryInvalid { position, .. }) => position,
            other => panic!("{name:?}: {other:?}"),
        };
        assert_eq!(position("Abc"), 0);
        assert_eq!(position("abc/Def"), 4);
        assert_eq!(position("a..b"), 1);
        assert_eq!(position("ab/"), 3);
        assert_eq!(position("ab-"), 3);
        assert_eq!(validate_repository(""), Err(NameError::RepositoryEmpty));
    }

    #[test]
    fn tags() {
        for tag in [
            "latest", "v1.2.3", "_", "_tags", "A", "1", "a-b_c.D", "a..", "a--",
        ] {
            check_tag(tag, true);
        }
        for tag in [
            "", ".", "..", ".hidden", "-a", "a/b", "../x", "a b", "a:b", "a@b", "é", ".tmp-x",
        ] {
            check_tag(tag, false);
        }
        check_tag(&"t".repeat(TAG_LEN_MAX), true);
        assert_eq!(
            validate_tag(&"t".repeat(TAG_LEN_MAX + 1)),
            Err(NameError::TagTooLong {
                len: TAG_LEN_MAX + 1
            })
        );
    }

    #[test]
    fn error_messages_quote_a_bounded_prefix() {
        let long = format!("A{}", "a".repeat(200));
        let message = validate_repository(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        let message = validate_tag(&format!("-{}", "a".repeat(100)))
            .unwrap_err()
            .to_string();
        assert!(message.len() < 200, "{message}");
    }
}
