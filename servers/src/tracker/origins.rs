//! Metainfo from the origins: on a miss the owner shard asks the origins' internal API
//! (`GET /internal/metainfo/<digest>`, with `?repo=<name>` when the request named the
//! repository that asks: an origin that lacks the blob fills it from that repository's
//! storage backend), in the order of the hash ring over their addresses (the blob's owners
//! first), and believes only a metainfo that decodes and describes the digest asked for.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use shoal_proto::Digest;
use shoal_proto::metainfo::{Metainfo, MetainfoError};
use shoal_proto::ring::{HashRing, RingError};
use shoal_proto::tracker_wire::{METAINFO_LEN_MAX, Repository};

use crate::http::client::{ClientBody, ClientConfig, ClientError, HttpClient};
use crate::http::query;
use crate::registry::parse_oci_error;

/// The origin API's metainfo path prefix (`servers::origin` serves it).
pub use crate::origin::METAINFO_PATH;

/// Bound on connecting to one origin.
pub const ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on one origin's response head, and on reading its body. An origin that fills a
/// miss from its storage backend answers once the whole blob is in (a 1 GB blob at
/// 100 MB/s takes ten of these).
pub const ORIGIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest error body read from an origin (for its message).
const ERROR_BODY_BYTES_MAX: usize = 16 << 10;

/// Characters of an origin's error message kept in the tracker's short answer.
const BRIEF_MESSAGE_CHARS_MAX: usize = 120;

/// Why one origin gave no usable metainfo.
#[derive(Debug, thiserror::Error)]
pub enum OriginAttemptError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: StatusCode,
        /// The message of the origin's OCI error body, if it sent one.
        message: Option<String>,
    },
    #[error("undecodable metainfo: {0}")]
    BadMetainfo(MetainfoError),
    #[error("answered with the metainfo of another blob, {0}")]
    WrongDigest(Box<Digest>),
}

impl OriginAttemptError {
    /// A few words, for the tracker protocol's short error message (the log has the rest).
    fn brief(&self) -> String {
        match self {
            OriginAttemptError::Client(ClientError::Connect { source, .. }) => {
                format!("connect: {source}")
            }
            OriginAttemptError::Client(ClientError::Timeout { what, after, .. }) => {
                format!("{what} timed out after {after:?}")
            }
            OriginAttemptError::Client(ClientError::BodyTooLarge { .. }) => {
                "metainfo too large".to_owned()
            }
            OriginAttemptError::Client(_) => "HTTP exchange failed".to_owned(),
            OriginAttemptError::Status {
                status,
                message: None,
            } => format!("answered {status}"),
            OriginAttemptError::Status {
                status,
                message: Some(message),
            } => {
                let message: String = message.chars().take(BRIEF_MESSAGE_CHARS_MAX).collect();
                format!("answered {}: {message}", status.as_u16())
            }
            OriginAttemptError::BadMetainfo(_) => "undecodable metainfo".to_owned(),
            OriginAttemptError::WrongDigest(_) => "metainfo of another blob".to_owned(),
        }
    }
}

/// Every origin tried failed (none answered that it lacks the blob, none gave it).
#[derive(Debug)]
pub struct OriginsFailed {
    pub digest: Digest,
    pub attempts: Vec<(SocketAddr, OriginAttemptError)>,
}

impl OriginsFailed {
    /// Each origin and why in a few words: what the tracker answers (its error messages are
    /// at most 256 bytes; the digest is the one asked for).
    pub fn brief(&self) -> String {
        let reasons: Vec<String> = self
            .attempts
            .iter()
            .map(|(origin, error)| format!("{origin}: {}", error.brief()))
            .collect();
        format!("no origin gave the metainfo: {}", reasons.join("; "))
    }
}

impl fmt::Display for OriginsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metainfo of {} from the origins: ", self.digest)?;
        if self.attempts.is_empty() {
            return f.write_str("no origin configured");
        }
        for (i, (origin, error)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{origin}: {error}")?;
        }
        Ok(())
    }
}

/// The origins one shard fetches metainfo from (one per shard: the HTTP client is `!Send`).
#[derive(Debug)]
pub(crate) struct Origins {
    addrs: Vec<SocketAddr>,
    /// Members are `addrs` as strings.
    ring: HashRing,
    client: HttpClient,
}

impl Origins {
    /// `None` without origins (misses are then simply not found).
    pub(crate) fn new(addrs: &[SocketAddr]) -> Result<Option<Origins>, RingError> {
        if addrs.is_empty() {
            return Ok(None);
        }
        let ring = HashRing::new(addrs.iter().map(SocketAddr::to_string))?;
        let client = HttpClient::new(ClientConfig {
            connect_timeout: ORIGIN_CONNECT_TIMEOUT,
            response_timeout: ORIGIN_RESPONSE_TIMEOUT,
            ..ClientConfig::default()
        });
        Ok(Some(Origins {
            addrs: addrs.to_vec(),
            ring,
            client,
        }))
    }

    /// Every origin, in the order a fetch of `digest` tries them.
    pub(crate) fn order(&self, digest: &Digest) -> Vec<SocketAddr> {
        self.ring
            .owners_all_members(digest.as_bytes(), self.addrs.len())
            .into_iter()
            .filter_map(|name| {
                self.addrs
                    .iter()
                    .find(|addr| addr.to_string() == name)
                    .copied()
            })
            .collect()
    }

    /// The checked encoding of `digest`'s metainfo from the first origin that has it.
    /// `Ok(None)` when no origin had it, at least one said so (404) and none said it could
    /// not tell (503: its storage backend is down, for one); an error otherwise (every origin
    /// unreachable, timed out, 503, garbage, another blob's metainfo).
    pub(crate) async fn fetch(
        &self,
        digest: &Digest,
        repository: Option<&Repository>,
    ) -> Result<Option<Vec<u8>>, OriginsFailed> {
        let mut attempts = Vec::new();
        let mut not_found = false;
        let mut cannot_tell = false;
        let mut path = format!("{METAINFO_PATH}{digest}");
        if let Some(repository) = repository {
            path.push_str("?repo=");
            path.push_str(&query::encode(repository.as_str()));
        }
        for origin in self.order(digest) {
            match self.fetch_one(origin, digest, &path).await {
                Ok(Some(bytes)) => return Ok(Some(bytes)),
                Ok(None) => not_found = true,
                Err(error) => {
                    tracing::debug!(%origin, %digest, %error, "origin gave no metainfo");
                    cannot_tell |= matches!(
                        error,
                        OriginAttemptError::Status { status, .. }
                            if status == StatusCode::SERVICE_UNAVAILABLE
                    );
                    attempts.push((origin, error));
                }
            }
        }
        if not_found && !cannot_tell {
            return Ok(None);
        }
        Err(OriginsFailed {
            digest: *digest,
            attempts,
        })
    }

    async fn fetch_one(
        &self,
        origin: SocketAddr,
        digest: &Digest,
        path: &str,
    ) -> Result<Option<Vec<u8>>, OriginAttemptError> {
        let response = self
            .client
            .request(
                Method::GET,
                origin,
                path,
                HeaderMap::new(),
                ClientBody::empty(),
            )
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => {
                let message = self
                    .client
                    .read_body(response.into_body(), ERROR_BODY_BYTES_MAX)
                    .await
                    .ok()
                    .and_then(|body| parse_oci_error(&body))
                    .map(|error| error.message);
                return Err(OriginAttemptError::Status { status, message });
            }
        }
        let bytes = self
            .client
            .read_body(response.into_body(), METAINFO_LEN_MAX)
            .await?;
        check(digest, &bytes)?;
        Ok(Some(bytes.to_vec()))
    }
}

/// A metainfo is believed only if it decodes and names the digest asked for.
fn check(asked: &Digest, bytes: &[u8]) -> Result<(), OriginAttemptError> {
    let metainfo = Metainfo::decode(bytes).map_err(OriginAttemptError::BadMetainfo)?;
    if metainfo.digest() != *asked {
        return Err(OriginAttemptError::WrongDigest(Box::new(metainfo.digest())));
    }
    Ok(())
}
