//! Query strings: one parameter's value, percent-decoded (clients encode `:` in digests and
//! `/` in repository names), and percent-encoding for the values we send on.

/// The first value of `key` in `query` (`a=1&b=2`), percent-decoded (`+` stays `+`: none of
/// the distribution API's values has a space). `None` when absent or not valid UTF-8 once
/// decoded; a key without `=` has the empty value.
pub fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| decode(v)).flatten()
    })
}

/// Percent-decodes `text`; `None` on a malformed escape or invalid UTF-8.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let q = "digest=sha256%3Aab&n=3&last=a%2Fb&flag";
        assert_eq!(param(q, "digest").as_deref(), Some("sha256:ab"));
        assert_eq!(param(q, "n").as_deref(), Some("3"));
        assert_eq!(param(q, "last").as_deref(), Some("a/b"));
        assert_eq!(param(q, "flag").as_deref(), Some(""));
        assert_eq!(param(q, "mount"), None);
        assert_eq!(param("x=%zz", "x"), None);
        assert_eq!(param("x=%2", "x"), None);
        assert_eq!(encode("a/b:c-d_e.f~"), "a%2Fb%3Ac-d_e.f~");
        assert_eq!(
            decode(&encode("library/ubuntu")).as_deref(),
            Some("library/ubuntu")
        );
    }
}
