//! The tracker protocol: length-prefixed, versioned frames over TCP between a peer and a
//! tracker. A connection carries any number of request/response pairs, strictly in turn: the
//! peer sends one request frame, the tracker answers with one response frame.
//!
//! All integers are big-endian.
//!
//! ```text
//! frame     = frame_len:u32  version:u8  kind:u8  body
//! frame_len = number of bytes after the frame_len field (1 + 1 + body length)
//! digest    = algorithm:u8 (1 = sha256, 2 = sha512)  hash[32 | 64]
//! peer      = peer_id[20]  flags:u8  family:u8 (4 | 6)  ip[4 | 16]  port:u16
//!
//! kind  direction  message      body
//! 0x01  request    Announce     digest info_hash[32] peer_id[20] port:u16 flags:u8
//! 0x02  request    GetMetainfo  digest [repo_len:u8 repo[repo_len]]
//! 0x03  request    PutMetainfo  metainfo (canonical encoding; the rest of the body)
//! 0x81  response   Announce     interval_ms:u32 n_peers:u16 peer × n_peers
//! 0x82  response   Metainfo     metainfo (canonical encoding; the rest of the body)
//! 0x83  response   NotFound     (empty)
//! 0x84  response   Ok           (empty)
//! 0x85  response   Error        code:u8 message_len:u16 message[message_len] (UTF-8)
//! ```
//!
//! Flags (announce request and peer entries): bit 0 `is_origin`, bit 1 `is_complete`; every
//! other bit must be clear.
//!
//! A GetMetainfo may name the repository that asks (so that a tracker's miss can be filled
//! from that repository's storage backend): after the digest, `repo_len` (1 to
//! [`REPOSITORY_LEN_MAX`]) and that many bytes of `[a-z0-9._/-]` ([`Repository`]). A body that
//! ends after the digest names none, as GetMetainfo frames from before the field did, so an
//! older peer's request still parses.
//!
//! Rules, all enforced by [`parse_request`] and [`parse_response`]:
//! - `version` is [`TRACKER_WIRE_VERSION`]; `frame_len` lies in
//!   `FRAME_LEN_MIN..=`[`FRAME_LEN_MAX`], and within the largest body of its kind.
//! - A request kind arriving where a response is expected (or the reverse) is an unknown kind.
//! - Each fixed-shape body has exactly its length; no trailing bytes inside a frame. A
//!   GetMetainfo body is a digest, or a digest and a non-empty repository of exactly
//!   `repo_len` bytes.
//! - `n_peers` is at most [`tracker::SAMPLE_SIZE_CEILING`]; `interval_ms` lies in
//!   `1..=`[`INTERVAL_MS_MAX`]; an error message is valid UTF-8 of at most
//!   [`ERROR_MESSAGE_LEN_MAX`] bytes; the error code is one [`ErrorCode`] knows.
//! - Metainfo bodies are at most [`metainfo::ENCODED_LEN_MAX`] bytes; their contents are not
//!   examined here (the receiver runs [`crate::metainfo::Metainfo::decode`]).
//!
//! So the encoding is canonical: a parsed message re-encodes to the bytes it came from. The
//! one lossy step is on the sending side: [`encode_response`] writes an announce interval in
//! whole milliseconds (rounded down, at least 1 ms), and peer addresses without their IPv6
//! flow info and scope id.
//!
//! # Reading frames
//!
//! [`check_request`] / [`check_response`] are cheap completeness tests (`Ok(None)`: read more
//! bytes). They reject a frame as soon as its bad bytes are visible: a bad `frame_len` from the
//! first four bytes, a bad version or kind (or a `frame_len` too large for the kind) from the
//! next two, a fixed-shape body of the wrong length once its digest algorithm is known. So a
//! server never buffers the body of a frame it will reject. A reader never needs more than
//! `4 + FRAME_LEN_MAX` bytes buffered; nothing is allocated on the strength of a length read
//! from the wire except the body being parsed, which is already in the buffer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use crate::metainfo;
use crate::tracker::{self, PeerInfo};
use crate::types::{Digest, InfoHash, PeerId};

/// The protocol version this build speaks (the frame's `version` byte). There is no
/// negotiation: a frame of any other version is rejected.
pub const TRACKER_WIRE_VERSION: u8 = 1;

/// Size of the `frame_len` field that starts every frame.
const LENGTH_PREFIX_LEN: usize = 4;

/// Bytes before a frame's body: `frame_len`, `version`, `kind`.
pub const FRAME_HEADER_LEN: usize = LENGTH_PREFIX_LEN + 1 + 1;

/// Smallest acceptable `frame_len`: `version` and `kind` with an empty body.
pub const FRAME_LEN_MIN: usize = FRAME_HEADER_LEN - LENGTH_PREFIX_LEN;

/// Longest error message in an [`Response::Error`], in bytes.
pub const ERROR_MESSAGE_LEN_MAX: usize = 256;

/// Longest announce interval on the wire (two hours, in milliseconds): above
/// [`tracker::ANNOUNCE_INTERVAL_CEILING`] plus its jitter, with room to spare.
pub const INTERVAL_MS_MAX: u32 = 2 * 3600 * 1000;

/// Longest metainfo in a PutMetainfo request or a Metainfo response.
pub const METAINFO_LEN_MAX: usize = metainfo::ENCODED_LEN_MAX as usize;

/// Most peers in one announce response.
pub const PEERS_MAX: usize = tracker::SAMPLE_SIZE_CEILING;

/// Longest repository name in a GetMetainfo (the OCI distribution spec's 255 characters).
pub const REPOSITORY_LEN_MAX: usize = 255;

const DIGEST_ALGORITHM_SHA256: u8 = 1;
const DIGEST_ALGORITHM_SHA512: u8 = 2;
/// Longest encoded digest: algorithm byte and a SHA-512.
const DIGEST_LEN_MAX: usize = 1 + 64;

const FLAG_IS_ORIGIN: u8 = 0x01;
const FLAG_IS_COMPLETE: u8 = 0x02;
const FLAGS_DEFINED: u8 = FLAG_IS_ORIGIN | FLAG_IS_COMPLETE;

const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;

/// Announce request body after the digest: info hash, peer id, port, flags.
const ANNOUNCE_TAIL_LEN: usize = 32 + 20 + 2 + 1;
/// Announce response body before the peers: `interval_ms`, `n_peers`.
const ANNOUNCE_RESPONSE_FIXED_LEN: usize = 4 + 2;
/// A peer entry before its IP: peer id, flags, family.
const PEER_FIXED_LEN: usize = 20 + 1 + 1;
const PEER_V4_LEN: usize = PEER_FIXED_LEN + 4 + 2;
const PEER_V6_LEN: usize = PEER_FIXED_LEN + 16 + 2;
/// Error body before the message: code, `message_len`.
const ERROR_FIXED_LEN: usize = 1 + 2;

/// Largest GetMetainfo body: a SHA-512 digest and the longest repository.
const GET_METAINFO_BODY_LEN_MAX: usize = DIGEST_LEN_MAX + 1 + REPOSITORY_LEN_MAX;

/// Largest announce response body: [`PEERS_MAX`] IPv6 peers.
const ANNOUNCE_RESPONSE_BODY_LEN_MAX: usize = ANNOUNCE_RESPONSE_FIXED_LEN + PEERS_MAX * PEER_V6_LEN;

/// Largest acceptable `frame_len` (bytes after the length field): a metainfo of
/// [`METAINFO_LEN_MAX`] bytes (about 32 MiB) is the largest body of any kind. A reader's
/// buffer never needs more than `4 + FRAME_LEN_MAX` bytes.
pub const FRAME_LEN_MAX: usize = FRAME_LEN_MIN + METAINFO_LEN_MAX;

const _: () = assert!(ANNOUNCE_RESPONSE_BODY_LEN_MAX < METAINFO_LEN_MAX);
const _: () = assert!(ERROR_FIXED_LEN + ERROR_MESSAGE_LEN_MAX < METAINFO_LEN_MAX);
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);
const _: () = assert!(PEERS_MAX <= u16::MAX as usize);
const _: () = assert!(REPOSITORY_LEN_MAX <= u8::MAX as usize);
const _: () = assert!(GET_METAINFO_BODY_LEN_MAX < METAINFO_LEN_MAX);
const _: () = assert!(ERROR_MESSAGE_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(
    INTERVAL_MS_MAX as u128
        > tracker::ANNOUNCE_INTERVAL_CEILING.as_millis()
            * (1000 + tracker::ANNOUNCE_INTERVAL_JITTER_PERMILLE as u128)
            / 1000
);
const _: () = assert!(usize::BITS >= u32::BITS);

/// A frame's `kind` byte. Request kinds have the high bit clear, response kinds set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    AnnounceRequest = 0x01,
    GetMetainfo = 0x02,
    PutMetainfo = 0x03,
    AnnounceResponse = 0x81,
    Metainfo = 0x82,
    NotFound = 0x83,
    Ok = 0x84,
    Error = 0x85,
}

/// Which side sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Peer to tracker.
    Request,
    /// Tracker to peer.
    Response,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 8] = [
        Kind::AnnounceRequest,
        Kind::GetMetainfo,
        Kind::PutMetainfo,
        Kind::AnnounceResponse,
        Kind::Metainfo,
        Kind::NotFound,
        Kind::Ok,
        Kind::Error,
    ];

    /// The kind with this byte, if it travels in `direction`.
    pub fn from_byte(byte: u8, direction: Direction) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.byte() == byte && kind.direction() == direction)
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    pub fn direction(self) -> Direction {
        if self.byte() & 0x80 == 0 {
            Direction::Request
        } else {
            Direction::Response
        }
    }

    /// Lowercase name, for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::AnnounceRequest => "announce request",
            Kind::GetMetainfo => "get-metainfo",
            Kind::PutMetainfo => "put-metainfo",
            Kind::AnnounceResponse => "announce response",
            Kind::Metainfo => "metainfo",
            Kind::NotFound => "not-found",
            Kind::Ok => "ok",
            Kind::Error => "error",
        }
    }

    /// Largest body a frame of this kind can have.
    fn body_len_max(self) -> usize {
        match self {
            Kind::AnnounceRequest => DIGEST_LEN_MAX + ANNOUNCE_TAIL_LEN,
            Kind::GetMetainfo => GET_METAINFO_BODY_LEN_MAX,
            Kind::PutMetainfo | Kind::Metainfo => METAINFO_LEN_MAX,
            Kind::AnnounceResponse => ANNOUNCE_RESPONSE_BODY_LEN_MAX,
            Kind::NotFound | Kind::Ok => 0,
            Kind::Error => ERROR_FIXED_LEN + ERROR_MESSAGE_LEN_MAX,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes do not form a valid frame. The stream cannot be resynchronised after any of
/// these: answer with an error if possible, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerWireError {
    #[error("frame length {len} exceeds the maximum of {max}")]
    FrameTooLong { len: usize, max: usize },
    #[error("frame length {len} is below the minimum of {min} (version and kind bytes)")]
    FrameTooShort { len: usize, min: usize },
    #[error("unsupported tracker wire version {0} (this build speaks version {TRACKER_WIRE_VERSION})", TRACKER_WIRE_VERSION = TRACKER_WIRE_VERSION)]
    UnsupportedVersion(u8),
    #[error("unknown {direction} kind {byte:#04x}")]
    UnknownKind { byte: u8, direction: Direction },
    #[error("{kind} frame body of {len} bytes exceeds the maximum of {max}")]
    BodyTooLong { kind: Kind, len: usize, max: usize },
    #[error("{kind} frame body must be {expected} bytes, got {actual}")]
    BodyLength {
        kind: Kind,
        expected: usize,
        actual: usize,
    },
    #[error("{kind} frame body is truncated: it ends inside a field")]
    BodyTruncated { kind: Kind },
    #[error("unknown digest algorithm {0} (1 = sha256, 2 = sha512)")]
    DigestAlgorithm(u8),
    #[error("flags {0:#04x} have undefined bits set (only is_origin and is_complete are defined)")]
    BadFlags(u8),
    #[error("announce response lists {n_peers} peers, more than the maximum of {max}")]
    TooManyPeers { n_peers: usize, max: usize },
    #[error("unknown address family {0} (4 or 6)")]
    AddressFamily(u8),
    #[error("announce interval of {interval_ms} ms is outside 1..={max} ms", max = INTERVAL_MS_MAX)]
    Interval { interval_ms: u32 },
    #[error("unknown error code {0}")]
    UnknownErrorCode(u8),
    #[error("error message of {len} bytes exceeds the maximum of {max}", max = ERROR_MESSAGE_LEN_MAX)]
    ErrorMessageTooLong { len: usize },
    #[error("error message is not valid UTF-8")]
    ErrorMessageNotUtf8,
    #[error("repository name is empty")]
    RepositoryEmpty,
    #[error("repository name of {len} bytes exceeds the maximum of {max}", max = REPOSITORY_LEN_MAX)]
    RepositoryTooLong { len: usize },
    #[error("repository name holds byte {byte:#04x} at {position}, outside [a-z0-9._/-]")]
    RepositoryByte { byte: u8, position: usize },
}

/// A repository name as the tracker protocol carries it: 1 to [`REPOSITORY_LEN_MAX`] bytes of
/// `[a-z0-9._/-]`. That is the alphabet of OCI repository names, not their grammar: the
/// receiver checks the grammar before it uses the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn new(name: &str) -> Result<Repository, TrackerWireError> {
        Repository::check(name.as_bytes())?;
        Ok(Repository(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(bytes: &[u8]) -> Result<(), TrackerWireError> {
        if bytes.is_empty() {
            return Err(TrackerWireError::RepositoryEmpty);
        }
        if bytes.len() > REPOSITORY_LEN_MAX {
            return Err(TrackerWireError::RepositoryTooLong { len: bytes.len() });
        }
        match bytes.iter().position(|&b| {
            !(b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'/' | b'-'))
        }) {
            Some(position) => Err(TrackerWireError::RepositoryByte {
                byte: bytes[position],
                position,
            }),
            None => Ok(()),
        }
    }

    /// From checked bytes of the wire.
    fn parse(bytes: &[u8]) -> Result<Repository, TrackerWireError> {
        Repository::check(bytes)?;
        // Checked: ASCII only, so each byte is its character.
        Ok(Repository(bytes.iter().map(|&b| char::from(b)).collect()))
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A peer announcing that it takes part in (or seeds) a blob's swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The blob, which also picks the tracker (hash ring over digests).
    pub digest: Digest,
    /// The swarm: SHA-256 of the blob's canonical metainfo.
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// The port the peer accepts peer connections on. The tracker pairs it with the source
    /// IP of the announcing connection, never with an address the peer claims.
    pub port: u16,
    pub is_origin: bool,
    pub is_complete: bool,
}

/// What a peer asks a tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Announce(Announce),
    /// The canonical metainfo of this blob, if the tracker has it. `repository`: the
    /// repository that asks, if known; a tracker that misses passes it on to the origins,
    /// whose storage backends are picked by repository.
    GetMetainfo {
        digest: Digest,
        repository: Option<Repository>,
    },
    /// Store this canonical metainfo (keyed by the digest inside it).
    PutMetainfo {
        metainfo: Vec<u8>,
    },
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Announce(_) => Kind::AnnounceRequest,
            Request::GetMetainfo { .. } => Kind::GetMetainfo,
            Request::PutMetainfo { .. } => Kind::PutMetainfo,
        }
    }
}

/// Why a tracker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request frame was malformed; the tracker closes the connection after saying so.
    Malformed = 1,
    /// A request the tracker cannot accept (e.g. announce port 0, an undecodable metainfo).
    BadRequest = 2,
    /// The tracker is at one of its bounds (swarms, peers, connections).
    Full = 3,
    /// Anything else on the tracker's side.
    Internal = 4,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 4] = [
        ErrorCode::Malformed,
        ErrorCode::BadRequest,
        ErrorCode::Full,
        ErrorCode::Internal,
    ];

    pub fn from_byte(byte: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.byte() == byte)
    }

    pub fn byte(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Full => "full",
            ErrorCode::Internal => "internal",
        })
    }
}

/// What a tracker answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to an announce: when to announce again, and other peers of the swarm (at most
    /// [`PEERS_MAX`]).
    Announce {
        interval: Duration,
        peers: Vec<PeerInfo>,
    },
    /// Answer to GetMetainfo: the canonical encoding.
    Metainfo(Vec<u8>),
    /// Answer to GetMetainfo: the tracker does not have it.
    NotFound,
    /// Answer to PutMetainfo: stored.
    Ok,
    /// The request was refused. `message` is at most [`ERROR_MESSAGE_LEN_MAX`] bytes: build
    /// it with [`Response::error`], which shortens longer messages.
    Error { code: ErrorCode, message: String },
}

impl Response {
    /// An error response, its message cut (at a character boundary) to
    /// [`ERROR_MESSAGE_LEN_MAX`] bytes.
    pub fn error(code: ErrorCode, message: &str) -> Response {
        let mut end = message.len().min(ERROR_MESSAGE_LEN_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Response::Error {
            code,
            message: message[..end].to_owned(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Response::Announce { .. } => Kind::AnnounceResponse,
            Response::Metainfo(_) => Kind::Metainfo,
            Response::NotFound => Kind::NotFound,
            Response::Ok => Kind::Ok,
            Response::Error { .. } => Kind::Error,
        }
    }
}

// ---- encoding ------------------------------------------------------------------------------

/// Appends `request`'s frame to `out`.
///
/// # Panics
///
/// On a request no peer may send (a caller bug): a PutMetainfo of more than
/// [`METAINFO_LEN_MAX`] bytes.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    let start = begin_frame(request.kind(), out);
    match request {
        Request::Announce(announce) => {
            encode_digest(&announce.digest, out);
            out.extend_from_slice(&announce.info_hash.0);
            out.extend_from_slice(&announce.peer_id.0);
            out.extend_from_slice(&announce.port.to_be_bytes());
            out.push(flags(announce.is_origin, announce.is_complete));
        }
        Request::GetMetainfo { digest, repository } => {
            encode_digest(digest, out);
            if let Some(repository) = repository {
                // Lossless: a Repository is at most REPOSITORY_LEN_MAX bytes, which fits a u8.
                out.push(repository.0.len() as u8);
                out.extend_from_slice(repository.0.as_bytes());
            }
        }
        Request::PutMetainfo { metainfo } => {
            assert!(
                metainfo.len() <= METAINFO_LEN_MAX,
                "metainfo of {} bytes exceeds METAINFO_LEN_MAX",
                metainfo.len()
            );
            out.extend_from_slice(metainfo);
        }
    }
    end_frame(request.kind(), start, out);
}

/// Appends `response`'s frame to `out`. The announce interval is written in whole
/// milliseconds (rounded down, at least 1, at most [`INTERVAL_MS_MAX`]).
///
/// # Panics
///
/// On a response no tracker may send (a caller bug): more than [`PEERS_MAX`] peers, a
/// metainfo of more than [`METAINFO_LEN_MAX`] bytes, an error message of more than
/// [`ERROR_MESSAGE_LEN_MAX`] bytes.
pub fn encode_response(response: &Response, out: &mut Vec<u8>) {
    let start = begin_frame(response.kind(), out);
    match response {
        Response::Announce { interval, peers } => {
            assert!(
                peers.len() <= PEERS_MAX,
                "{} peers exceed PEERS_MAX",
                peers.len()
            );
            let interval_ms = interval.as_millis().clamp(1, u128::from(INTERVAL_MS_MAX));
            // Lossless: clamped to INTERVAL_MS_MAX, and PEERS_MAX fits in a u16 (asserted).
            out.extend_from_slice(&(interval_ms as u32).to_be_bytes());
            out.extend_from_slice(&(peers.len() as u16).to_be_bytes());
            for peer in peers {
                encode_peer(peer, out);
            }
        }
        Response::Metainfo(metainfo) => {
            assert!(
                metainfo.len() <= METAINFO_LEN_MAX,
                "metainfo of {} bytes exceeds METAINFO_LEN_MAX",
                metainfo.len()
            );
            out.extend_from_slice(metainfo);
        }
        Response::NotFound | Response::Ok => {}
        Response::Error { code, message } => {
            assert!(
                message.len() <= ERROR_MESSAGE_LEN_MAX,
                "error message of {} bytes exceeds ERROR_MESSAGE_LEN_MAX",
                message.len()
            );
            out.push(code.byte());
            // Lossless: asserted above, and the maximum fits in a u16.
            out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            out.extend_from_slice(message.as_bytes());
        }
    }
    end_frame(response.kind(), start, out);
}

/// Writes a placeholder length, the version and the kind; returns where the frame starts.
fn begin_frame(kind: Kind, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    out.push(TRACKER_WIRE_VERSION);
    out.push(kind.byte());
    start
}

/// Fills in the length of the frame that starts at `start`.
fn end_frame(kind: Kind, start: usize, out: &mut [u8]) {
    let frame_len = out.len() - start - LENGTH_PREFIX_LEN;
    assert!(frame_len - FRAME_LEN_MIN <= kind.body_len_max());
    assert!(frame_len <= FRAME_LEN_MAX);
    // Lossless: FRAME_LEN_MAX fits in a u32 (asserted at compile time).
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&(frame_len as u32).to_be_bytes());
}

fn encode_digest(digest: &Digest, out: &mut Vec<u8>) {
    out.push(match digest {
        Digest::Sha256(_) => DIGEST_ALGORITHM_SHA256,
        Digest::Sha512(_) => DIGEST_ALGORITHM_SHA512,
    });
    out.extend_from_slice(digest.as_bytes());
}

fn encode_peer(peer: &PeerInfo, out: &mut Vec<u8>) {
    out.extend_from_slice(&peer.id.0);
    out.push(flags(peer.is_origin, peer.is_complete));
    match peer.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(FAMILY_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(FAMILY_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&peer.addr.port().to_be_bytes());
}

fn flags(is_origin: bool, is_complete: bool) -> u8 {
    let mut flags = 0;
    if is_origin {
        flags |= FLAG_IS_ORIGIN;
    }
    if is_complete {
        flags |= FLAG_IS_COMPLETE;
    }
    flags
}

// ---- parsing -------------------------------------------------------------------------------

/// Checks whether `buf` starts with a complete request frame, without decoding it:
/// `Ok(None)` means read more bytes, `Ok(Some(n))` a complete frame of `n` bytes (length field
/// included). Rejects a malformed frame as soon as the bytes in `buf` show it (see the module
/// docs). Constant time; never looks past the frame.
pub fn check_request(buf: &[u8]) -> Result<Option<usize>, TrackerWireError> {
    Ok(check_frame(buf, Direction::Request)?.map(|frame| frame.total_len))
}

/// [`check_request`] for response frames.
pub fn check_response(buf: &[u8]) -> Result<Option<usize>, TrackerWireError> {
    Ok(check_frame(buf, Direction::Response)?.map(|frame| frame.total_len))
}

/// Parses the request frame at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the request and the number of bytes it took. Bytes after the frame are left alone.
/// Never panics; allocates only a PutMetainfo's bytes, which are already in `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, TrackerWireError> {
    let Some(frame) = check_frame(buf, Direction::Request)? else {
        return Ok(None);
    };
    let request = decode_request(frame.kind, frame.body)?;
    Ok(Some((request, frame.total_len)))
}

/// Parses the response frame at the start of `buf`, like [`parse_request`]. Allocates at
/// most the peers of an announce response (bounded by [`PEERS_MAX`]) or a metainfo or
/// message already in `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, TrackerWireError> {
    let Some(frame) = check_frame(buf, Direction::Response)? else {
        return Ok(None);
    };
    let response = decode_response(frame.kind, frame.body)?;
    Ok(Some((response, frame.total_len)))
}

/// A complete, shape-checked frame at the start of a buffer.
struct Frame<'a> {
    kind: Kind,
    body: &'a [u8],
    total_len: usize,
}

fn check_frame(buf: &[u8], direction: Direction) -> Result<Option<Frame<'_>>, TrackerWireError> {
    let Some(frame_len) = be_u32_at(buf, 0) else {
        return Ok(None);
    };
    let frame_len = frame_len as usize;
    if frame_len > FRAME_LEN_MAX {
        return Err(TrackerWireError::FrameTooLong {
            len: frame_len,
            max: FRAME_LEN_MAX,
        });
    }
    if frame_len < FRAME_LEN_MIN {
        return Err(TrackerWireError::FrameTooShort {
            len: frame_len,
            min: FRAME_LEN_MIN,
        });
    }
    let Some(&version) = buf.get(LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    if version != TRACKER_WIRE_VERSION {
        return Err(TrackerWireError::UnsupportedVersion(version));
    }
    let Some(&kind_byte) = buf.get(LENGTH_PREFIX_LEN + 1) else {
        return Ok(None);
    };
    let kind = Kind::from_byte(kind_byte, direction).ok_or(TrackerWireError::UnknownKind {
        byte: kind_byte,
        direction,
    })?;
    let body_len = frame_len - FRAME_LEN_MIN;
    if body_len > kind.body_len_max() {
        return Err(TrackerWireError::BodyTooLong {
            kind,
            len: body_len,
            max: kind.body_len_max(),
        });
    }
    let total_len = LENGTH_PREFIX_LEN + frame_len;
    let visible_body = buf
        .get(FRAME_HEADER_LEN..total_len.min(buf.len()))
        .unwrap_or_default();
    check_body_prefix(kind, body_len, visible_body)?;
    Ok(buf.get(FRAME_HEADER_LEN..total_len).map(|body| Frame {
        kind,
        body,
        total_len,
    }))
}

/// Rejects a frame whose body cannot have `body_len` bytes, as far as `visible_body` (a prefix
/// of the body) shows. The decoders repeat every check on the whole body.
fn check_body_prefix(
    kind: Kind,
    body_len: usize,
    visible_body: &[u8],
) -> Result<(), TrackerWireError> {
    let digest_tail = match kind {
        Kind::AnnounceRequest => Some(ANNOUNCE_TAIL_LEN),
        Kind::GetMetainfo => return check_get_metainfo_prefix(body_len, visible_body),
        Kind::NotFound | Kind::Ok => return expect_body_len(kind, 0, body_len),
        Kind::PutMetainfo | Kind::Metainfo | Kind::AnnounceResponse | Kind::Error => None,
    };
    if let (Some(tail), Some(&algorithm)) = (digest_tail, visible_body.first()) {
        let expected = 1 + digest_hash_len(algorithm)? + tail;
        expect_body_len(kind, expected, body_len)?;
    }
    Ok(())
}

/// A GetMetainfo body: a digest, then optionally `repo_len` (at least 1) and the name.
fn check_get_metainfo_prefix(body_len: usize, visible_body: &[u8]) -> Result<(), TrackerWireError> {
    let kind = Kind::GetMetainfo;
    let Some(&algorithm) = visible_body.first() else {
        return Ok(());
    };
    let digest_len = 1 + digest_hash_len(algorithm)?;
    // A digest alone, or a digest, a length byte and at least one byte of name.
    if body_len == digest_len {
        return Ok(());
    }
    if body_len < digest_len + 2 {
        return expect_body_len(kind, digest_len, body_len);
    }
    match visible_body.get(digest_len) {
        None => Ok(()),
        Some(0) => Err(TrackerWireError::RepositoryEmpty),
        Some(&repo_len) => expect_body_len(kind, digest_len + 1 + usize::from(repo_len), body_len),
    }
}

fn decode_request(kind: Kind, body: &[u8]) -> Result<Request, TrackerWireError> {
    let mut reader = Reader { kind, rest: body };
    let request = match kind {
        Kind::AnnounceRequest => {
            let digest = reader.digest()?;
            let info_hash = InfoHash(reader.array()?);
            let peer_id = PeerId(reader.array()?);
            let port = u16::from_be_bytes(reader.array()?);
            let (is_origin, is_complete) = parse_flags(reader.u8()?)?;
            Request::Announce(Announce {
                digest,
                info_hash,
                peer_id,
                port,
                is_origin,
                is_complete,
            })
        }
        Kind::GetMetainfo => {
            let digest = reader.digest()?;
            let repository = if reader.rest.is_empty() {
                None
            } else {
                let repo_len = usize::from(reader.u8()?);
                Some(Repository::parse(reader.take(repo_len)?)?)
            };
            Request::GetMetainfo { digest, repository }
        }
        Kind::PutMetainfo => Request::PutMetainfo {
            metainfo: reader.take_rest().to_vec(),
        },
        _ => return Err(unknown_kind(kind, Direction::Request)),
    };
    reader.finish(body.len())?;
    Ok(request)
}

fn decode_response(kind: Kind, body: &[u8]) -> Result<Response, TrackerWireError> {
    let mut reader = Reader { kind, rest: body };
    let response = match kind {
        Kind::AnnounceResponse => {
            let interval_ms = u32::from_be_bytes(reader.array()?);
            if !(1..=INTERVAL_MS_MAX).contains(&interval_ms) {
                return Err(TrackerWireError::Interval { interval_ms });
            }
            let n_peers = usize::from(u16::from_be_bytes(reader.array()?));
            if n_peers > PEERS_MAX {
                return Err(TrackerWireError::TooManyPeers {
                    n_peers,
                    max: PEERS_MAX,
                });
            }
            // Bounded by PEERS_MAX; and never more than the body can hold.
            let mut peers = Vec::with_capacity(n_peers.min(reader.rest.len() / PEER_V4_LEN));
            for _ in 0..n_peers {
                peers.push(reader.peer()?);
            }
            Response::Announce {
                interval: Duration::from_millis(u64::from(interval_ms)),
                peers,
            }
        }
        Kind::Metainfo => Response::Metainfo(reader.take_rest().to_vec()),
        Kind::NotFound => Response::NotFound,
        Kind::Ok => Response::Ok,
        Kind::Error => {
            let code_byte = reader.u8()?;
            let code = ErrorCode::from_byte(code_byte)
                .ok_or(TrackerWireError::UnknownErrorCode(code_byte))?;
            let len = usize::from(u16::from_be_bytes(reader.array()?));
            if len > ERROR_MESSAGE_LEN_MAX {
                return Err(TrackerWireError::ErrorMessageTooLong { len });
            }
            let bytes = reader.take(len)?;
            let message = std::str::from_utf8(bytes)
                .map_err(|_| TrackerWireError::ErrorMessageNotUtf8)?
                .to_owned();
            Response::Error { code, message }
        }
        _ => return Err(unknown_kind(kind, Direction::Response)),
    };
    reader.finish(body.len())?;
    Ok(response)
}

fn unknown_kind(kind: Kind, direction: Direction) -> TrackerWireError {
    TrackerWireError::UnknownKind {
        byte: kind.byte(),
        direction,
    }
}

fn digest_hash_len(algorithm: u8) -> Result<usize, TrackerWireError> {
    match algorithm {
        DIGEST_ALGORITHM_SHA256 => Ok(32),
        DIGEST_ALGORITHM_SHA512 => Ok(64),
        other => Err(TrackerWireError::DigestAlgorithm(other)),
    }
}

fn parse_flags(flags: u8) -> Result<(bool, bool), TrackerWireError> {
    if flags & !FLAGS_DEFINED != 0 {
        return Err(TrackerWireError::BadFlags(flags));
    }
    Ok((flags & FLAG_IS_ORIGIN != 0, flags & FLAG_IS_COMPLETE != 0))
}

fn expect_body_len(kind: Kind, expected: usize, actual: usize) -> Result<(), TrackerWireError> {
    if actual != expected {
        return Err(TrackerWireError::BodyLength {
            kind,
            expected,
            actual,
        });
    }
    Ok(())
}

fn be_u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..)?.first_chunk::<4>()?;
    Some(u32::from_be_bytes(*bytes))
}

/// Reads fields off the front of a frame body.
struct Reader<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> TrackerWireError {
        TrackerWireError::BodyTruncated { kind: self.kind }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TrackerWireError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated())?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, TrackerWireError> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], TrackerWireError> {
        if self.rest.len() < len {
            return Err(self.truncated());
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn digest(&mut self) -> Result<Digest, TrackerWireError> {
        Ok(match self.u8()? {
            DIGEST_ALGORITHM_SHA256 => Digest::Sha256(self.array()?),
            DIGEST_ALGORITHM_SHA512 => Digest::Sha512(self.array()?),
            other => return Err(TrackerWireError::DigestAlgorithm(other)),
        })
    }

    fn peer(&mut self) -> Result<PeerInfo, TrackerWireError> {
        let id = PeerId(self.array()?);
        let (is_origin, is_complete) = parse_flags(self.u8()?)?;
        let addr = match self.u8()? {
            FAMILY_IPV4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = u16::from_be_bytes(self.array()?);
                SocketAddr::V4(SocketAddrV4::new(ip, port))
            }
            FAMILY_IPV6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = u16::from_be_bytes(self.array()?);
                SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
            }
            other => return Err(TrackerWireError::AddressFamily(other)),
        };
        Ok(PeerInfo {
            id,
            addr,
            is_origin,
            is_complete,
        })
    }

    /// Fails unless the whole body was read.
    fn finish(&self, body_len: usize) -> Result<(), TrackerWireError> {
        if !self.rest.is_empty() {
            return Err(TrackerWireError::BodyLength {
                kind: self.kind,
                expected: body_len - self.rest.len(),
                actual: body_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
