//! Core identifiers: OCI digests, peer ids, info hashes, piece and stripe indexes.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an acceptable OCI digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no ':' between algorithm and encoded part")]
    MissingSeparator(String),
    #[error("digest algorithm {0:?} does not match the OCI grammar [a-z0-9]+([+._-][a-z0-9]+)*")]
    BadAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (only sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters, got {actual:?}")]
    BadEncoded {
        algorithm: &'static str,
        expected: usize,
        actual: String,
    },
}

/// An OCI content digest. Only `sha256` and `sha512` are accepted: every other algorithm,
/// registered or not, is rejected with [`DigestError::UnsupportedAlgorithm`].
///
/// Parsing follows the OCI image-spec grammar
/// (`algorithm ":" encoded`, `algorithm-component ([+._-] algorithm-component)*`), then the
/// per-algorithm rule: lowercase hex of exactly 64 (sha256) or 128 (sha512) characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

/// The longest textual digest we accept (sha512: 7 + 128). Anything longer is rejected
/// before it is examined further.
pub const DIGEST_STRING_LEN_MAX: usize = 7 + 128;

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, encoded)) = text.split_once(':') else {
            return Err(DigestError::MissingSeparator(truncate_for_error(text)));
        };
        if !algorithm_is_well_formed(algorithm) {
            return Err(DigestError::BadAlgorithm(truncate_for_error(algorithm)));
        }
        match algorithm {
            "sha256" => {
                let mut bytes = [0u8; 32];
                decode_lower_hex(encoded, &mut bytes, "sha256")?;
                Ok(Digest::Sha256(bytes))
            }
            "sha512" => {
                let mut bytes = [0u8; 64];
                decode_lower_hex(encoded, &mut bytes, "sha512")?;
                Ok(Digest::Sha512(bytes))
            }
            other => Err(DigestError::UnsupportedAlgorithm(truncate_for_error(other))),
        }
    }

    /// Digest of `data` with SHA-256.
    pub fn sha256_of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::Sha256(sha2::Sha256::digest(data).into())
    }

    /// Digest of `data` with SHA-512.
    pub fn sha512_of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::Sha512(sha2::Sha512::digest(data).into())
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "sha256",
            Digest::Sha512(_) => "sha512",
        }
    }

    /// The raw hash bytes (32 or 64).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(b) => b,
            Digest::Sha512(b) => b,
        }
    }

    /// Lowercase hex of the hash bytes, without the algorithm prefix.
    pub fn encoded(&self) -> String {
        hex(self.as_bytes())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.encoded())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn algorithm_is_well_formed(algorithm: &str) -> bool {
    // algorithm-component ([+._-] algorithm-component)*, component = [a-z0-9]+
    let mut previous_was_separator = true; // the first char may not be a separator
    for c in algorithm.chars() {
        match c {
            'a'..='z' | '0'..='9' => previous_was_separator = false,
            '+' | '.' | '_' | '-' if !previous_was_separator => previous_was_separator = true,
            _ => return false,
        }
    }
    !previous_was_separator
}

fn decode_lower_hex(
    encoded: &str,
    out: &mut [u8],
    algorithm: &'static str,
) -> Result<(), DigestError> {
    let expected = out.len() * 2;
    let bad = || DigestError::BadEncoded {
        algorithm,
        expected,
        actual: truncate_for_error(encoded),
    };
    let text = encoded.as_bytes();
    if text.len() != expected {
        return Err(bad());
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = lower_hex_value(pair[0]).ok_or_else(bad)?;
        let low = lower_hex_value(pair[1]).ok_or_else(bad)?;
        *byte = (high << 4) | low;
    }
    Ok(())
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Error messages quote at most this many characters of attacker-supplied text.
const ERROR_QUOTE_LEN_MAX: usize = 160;

fn truncate_for_error(text: &str) -> String {
    text.chars().take(ERROR_QUOTE_LEN_MAX).collect()
}

/// Lowercase hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// A peer's identity in the swarm: 20 opaque bytes, chosen by the peer (randomly, or derived
/// from its address for origins). Shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A peer id derived from a number: handy for simulators and tests.
    pub fn from_u64(n: u64) -> PeerId {
        let mut bytes = [0u8; 20];
        bytes[12..].copy_from_slice(&n.to_be_bytes());
        PeerId(bytes)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", hex(&self.0))
    }
}

/// SHA-256 of a metainfo's canonical encoding: names one swarm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 32]);

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", hex(&self.0))
    }
}

/// Index of a piece within a blob (not within a stripe).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PieceIndex(pub u32);

/// Index of a stripe within a blob. Stripe `s` lives on shard `s mod n_shards`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct StripeIndex(pub u32);

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "piece {}", self.0)
    }
}

impl fmt::Display for StripeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stripe {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn check(input: &str, expected: Result<&str, &str>) {
        match (Digest::parse(input), expected) {
            (Ok(d), Ok(text)) => assert_eq!(d.to_string(), text, "input {input:?}"),
            (Err(e), Err(fragment)) => {
                let message = e.to_string();
                assert!(message.contains(fragment), "input {input:?}: {message}");
            }
            (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn digest_grammar() {
        let sha256 = format!("sha256:{HEX64}");
        check(&sha256, Ok(&sha256));
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        check(&sha512, Ok(&sha512));
        check(HEX64, Err("no ':'"));
        check("", Err("no ':'"));
        check(&format!("SHA256:{HEX64}"), Err("OCI grammar"));
        check(&format!(":{HEX64}"), Err("OCI grammar"));
        check(&format!("sha256+:{HEX64}"), Err("OCI grammar"));
        check(&format!("sha+.256:{HEX64}"), Err("OCI grammar"));
        check(&format!("md5:{HEX64}"), Err("not supported"));
        check(&format!("blake3:{HEX64}"), Err("not supported"));
        check(&format!("sha256+b64u:{HEX64}"), Err("not supported"));
        check(
            &format!("sha256:{}", HEX64.to_uppercase()),
            Err("lowercase hex"),
        );
        check(&format!("sha256:{}", &HEX64[1..]), Err("64 lowercase hex"));
        check(&format!("sha256:{HEX64}0"), Err("64 lowercase hex"));
        check(&format!("sha256:{}g", &HEX64[1..]), Err("lowercase hex"));
        check("sha256:", Err("64 lowercase hex"));
        check(&format!("sha512:{HEX64}"), Err("128 lowercase hex"));
        check(&format!("sha256:{}é", &HEX64[2..]), Err("lowercase hex"));
    }

    #[test]
    fn digest_of_empty() {
        assert_eq!(Digest::sha256_of(b"").encoded(), HEX64);
        let text = Digest::sha512_of(b"abc").to_string();
        assert!(text.starts_with("sha512:ddaf35a193617aba"), "{text}");
        assert_eq!(Digest::parse(&text).unwrap(), Digest::sha512_of(b"abc"));
    }

    #[test]
    fn long_input_is_quoted_bounded() {
        let long = "x".repeat(100_000);
        let message = Digest::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 400, "{}", message.len());
    }
}
