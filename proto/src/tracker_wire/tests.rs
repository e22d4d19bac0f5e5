//! Tests of the tracker codec: golden encodings, early rejection, round trips, garbage.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

const SHA256: [u8; 32] = [0x11; 32];
const INFO_HASH: [u8; 32] = [0xa5; 32];
const PEER_ID: [u8; 20] = [0x3c; 20];

fn announce(port: u16, is_origin: bool, is_complete: bool) -> Request {
    Request::Announce(Announce {
        digest: Digest::Sha256(SHA256),
        info_hash: InfoHash(INFO_HASH),
        peer_id: PeerId(PEER_ID),
        port,
        is_origin,
        is_complete,
    })
}

fn peer(n: u64, addr: &str, is_origin: bool, is_complete: bool) -> PeerInfo {
    PeerInfo {
        id: PeerId::from_u64(n),
        addr: addr.parse().unwrap(),
        is_origin,
        is_complete,
    }
}

fn request_bytes(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(request, &mut out);
    out
}

fn response_bytes(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(response, &mut out);
    out
}

/// A frame with a `frame_len` matching `body`.
fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(FRAME_LEN_MIN + body.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.push(TRACKER_WIRE_VERSION);
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// `input` is exactly one request frame encoding `expected`: every proper prefix needs more
/// bytes, the whole parses, trailing bytes stay, and encoding gives it back.
#[track_caller]
fn check_request_accepted(input: &[u8], expected: Request) {
    for end in 0..input.len() {
        assert_eq!(parse_request(&input[..end]), Ok(None), "prefix of {end}");
        assert_eq!(check_request(&input[..end]), Ok(None), "prefix of {end}");
    }
    let n = input.len();
    assert_eq!(parse_request(input), Ok(Some((expected.clone(), n))));
    assert_eq!(check_request(input), Ok(Some(n)));
    let mut with_tail = input.to_vec();
    with_tail.extend_from_slice(&[0xff, 1, 2]);
    assert_eq!(parse_request(&with_tail), Ok(Some((expected.clone(), n))));
    assert_eq!(request_bytes(&expected), input, "encoding is canonical");
}

#[track_caller]
fn check_response_accepted(input: &[u8], expected: Response) {
    for end in 0..input.len() {
        assert_eq!(parse_response(&input[..end]), Ok(None), "prefix of {end}");
    }
    let n = input.len();
    assert_eq!(parse_response(input), Ok(Some((expected.clone(), n))));
    assert_eq!(check_response(input), Ok(Some(n)));
    assert_eq!(response_bytes(&expected), input, "encoding is canonical");
}

/// Shorter prefixes than `visible` need more bytes; from `visible` on, `expected`.
#[track_caller]
fn check_request_rejected(input: &[u8], visible: usize, expected: TrackerWireError) {
    for end in 0..=input.len() {
        let want = if end < visible {
            Ok(None)
        } else {
            Err(expected.clone())
        };
        assert_eq!(parse_request(&input[..end]), want, "prefix of {end}");
    }
}

#[track_caller]
fn check_response_rejected(input: &[u8], visible: usize, expected: TrackerWireError) {
    for end in 0..=input.len() {
        let want = if end < visible {
            Ok(None)
        } else {
            Err(expected.clone())
        };
        assert_eq!(parse_response(&input[..end]), want, "prefix of {end}");
    }
}

#[test]
fn golden_requests() {
    let mut body = vec![1];
    body.extend_from_slice(&SHA256);
    body.extend_from_slice(&INFO_HASH);
    body.extend_from_slice(&PEER_ID);
    body.extend_from_slice(&[0x1b, 0x9e, 0x03]);
    check_request_accepted(&raw(0x01, &body), announce(7070, true, true));

    let mut body = vec![1];
    body.extend_from_slice(&SHA256);
    check_request_accepted(
        &raw(0x02, &body),
        Request::GetMetainfo {
            digest: Digest::Sha256(SHA256),
            repository: None,
        },
    );
    body.push(7);
    body.extend_from_slice(b"hub/app");
    check_request_accepted(
        &raw(0x02, &body),
        Request::GetMetainfo {
            digest: Digest::Sha256(SHA256),
            repository: Some(Repository::new("hub/app").unwrap()),
        },
    );
    let mut body = vec![2];
    body.extend_from_slice(&[0x22; 64]);
    check_request_accepted(
        &raw(0x02, &body),
        Request::GetMetainfo {
            digest: Digest::Sha512([0x22; 64]),
            repository: None,
        },
    );
    let longest = "a".repeat(REPOSITORY_LEN_MAX);
    body.push(255);
    body.extend_from_slice(longest.as_bytes());
    check_request_accepted(
        &raw(0x02, &body),
        Request::GetMetainfo {
            digest: Digest::Sha512([0x22; 64]),
            repository: Some(Repository::new(&longest).unwrap()),
        },
    );
    check_request_accepted(
        &raw(0x03, b"SHMI..."),
        Request::PutMetainfo {
            metainfo: b"SHMI...".to_vec(),
        },
    );
}

#[test]
fn golden_responses() {
    check_response_accepted(&[0, 0, 0, 2, 1, 0x83], Response::NotFound);
    check_response_accepted(&[0, 0, 0, 2, 1, 0x84], Response::Ok);
    check_response_accepted(&raw(0x82, b"abc"), Response::Metainfo(b"abc".to_vec()));
    check_response_accepted(
        &raw(0x85, &[3, 0, 4, b'f', b'u', b'l', b'l']),
        Response::error(ErrorCode::Full, "full"),
    );
    let mut body = vec![0, 0, 0x13, 0x88, 0, 2];
    body.extend_from_slice(&PeerId::from_u64(1).0);
    body.extend_from_slice(&[0x01, 4, 10, 0, 0, 1, 0x1b, 0x9e]);
    body.extend_from_slice(&PeerId::from_u64(2).0);
    body.extend_from_slice(&[0x02, 6]);
    body.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&[0, 80]);
    check_response_accepted(
        &raw(0x81, &body),
        Response::Announce {
            interval: Duration::from_secs(5),
            peers: vec![
                peer(1, "10.0.0.1:7070", true, false),
                peer(2, "[::1]:80", false, true),
            ],
        },
    );
}

#[test]
fn constants() {
    assert_eq!(FRAME_HEADER_LEN, 6);
    assert_eq!(FRAME_LEN_MIN, 2);
    assert_eq!(
        FRAME_LEN_MAX as u64,
        2 + metainfo::ENCODED_LEN_MAX,
        "a frame holds the largest metainfo"
    );
    assert_eq!(PEER_V4_LEN, 28);
    assert_eq!(PEER_V6_LEN, 40);
    // The largest announce response is well below a metainfo frame.
    let peers = (0..PEERS_MAX as u64)
        .map(|n| peer(n, "[2001:db8::1]:7000", false, false))
        .collect();
    let bytes = response_bytes(&Response::Announce {
        interval: Duration::from_secs(1),
        peers,
    });
    assert_eq!(
        bytes.len(),
        FRAME_HEADER_LEN + ANNOUNCE_RESPONSE_BODY_LEN_MAX
    );
}

#[test]
fn kinds_belong_to_one_direction() {
    for kind in Kind::ALL {
        assert_eq!(Kind::from_byte(kind.byte(), kind.direction()), Some(kind));
        let other = match kind.direction() {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        };
        assert_eq!(Kind::from_byte(kind.byte(), other), None);
    }
    // A response sent where a request is expected is refused from its kind byte.
    let bytes = response_bytes(&Response::Ok);
    check_request_rejected(
        &bytes,
        6,
        TrackerWireError::UnknownKind {
            byte: 0x84,
            direction: Direction::Request,
        },
    );
    let bytes = request_bytes(&announce(1, false, false));
    check_response_rejected(
        &bytes,
        6,
        TrackerWireError::UnknownKind {
            byte: 0x01,
            direction: Direction::Response,
        },
    );
}

#[test]
fn frame_header_rejected_early() {
    let too_long = |len| TrackerWireError::FrameTooLong {
        len,
        max: FRAME_LEN_MAX,
    };
    check_request_rejected(
        &[0, 0, 0, 1],
        4,
        TrackerWireError::FrameTooShort { len: 1, min: 2 },
    );
    check_request_rejected(&[0xff; 4], 4, too_long(u32::MAX as usize));
    let just_over = u32::try_from(FRAME_LEN_MAX + 1).unwrap().to_be_bytes();
    check_request_rejected(&just_over, 4, too_long(FRAME_LEN_MAX + 1));
    check_request_rejected(
        &[0, 0, 0, 2, 9, 1],
        5,
        TrackerWireError::UnsupportedVersion(9),
    );
    // A frame too long for its kind is refused from the header, before its body arrives.
    let mut big_announce = u32::try_from(FRAME_LEN_MAX).unwrap().to_be_bytes().to_vec();
    big_announce.extend_from_slice(&[1, 0x01]);
    check_request_rejected(
        &big_announce,
        6,
        TrackerWireError::BodyTooLong {
            kind: Kind::AnnounceRequest,
            len: FRAME_LEN_MAX - 2,
            max: 65 + 55,
        },
    );
    check_response_rejected(
        &raw(0x84, &[0]),
        6,
        TrackerWireError::BodyTooLong {
            kind: Kind::Ok,
            len: 1,
            max: 0,
        },
    );
}

#[test]
fn digest_bodies_rejected_from_algorithm_byte() {
    // A sha512 algorithm byte in a body sized for sha256.
    let mut body = vec![2];
    body.extend_from_slice(&SHA256);
    check_request_rejected(
        &raw(0x02, &body),
        7,
        TrackerWireError::BodyLength {
            kind: Kind::GetMetainfo,
            expected: 65,
            actual: 33,
        },
    );
    body[0] = 7;
    check_request_rejected(&raw(0x02, &body), 7, TrackerWireError::DigestAlgorithm(7));
    let mut announce_bytes = request_bytes(&announce(1, false, false));
    announce_bytes.push(0);
    announce_bytes[3] += 1;
    check_request_rejected(
        &announce_bytes,
        7,
        TrackerWireError::BodyLength {
            kind: Kind::AnnounceRequest,
            expected: 33 + 55,
            actual: 33 + 56,
        },
    );
    check_request_rejected(
        &raw(0x02, &[]),
        6,
        TrackerWireError::BodyTruncated {
            kind: Kind::GetMetainfo,
        },
    );
}

#[test]
fn repositories_rejected() {
    let mut digest = vec![1];
    digest.extend_from_slice(&SHA256);
    // A length byte and no name: refused from the frame length.
    let mut body = digest.clone();
    body.push(3);
    check_request_rejected(
        &raw(0x02, &body),
        7,
        TrackerWireError::BodyLength {
            kind: Kind::GetMetainfo,
            expected: 33,
            actual: 34,
        },
    );
    // An empty name: refused once the length byte shows it.
    let mut body = digest.clone();
    body.extend_from_slice(&[0, b'a']);
    check_request_rejected(&raw(0x02, &body), 6 + 34, TrackerWireError::RepositoryEmpty);
    // A name longer or shorter than its length byte says.
    let mut body = digest.clone();
    body.extend_from_slice(&[2, b'a', b'b', b'c']);
    check_request_rejected(
        &raw(0x02, &body),
        6 + 34,
        TrackerWireError::BodyLength {
            kind: Kind::GetMetainfo,
            expected: 36,
            actual: 37,
        },
    );
    // Bytes outside the names' alphabet: refused when the frame is whole.
    for (name, byte, position) in [
        (&b"Hub/app"[..], b'H', 0),
        (b"a b", b' ', 1),
        (b"app\\x", b'\\', 3),
        (b"\xc3\xa9", 0xc3, 0),
    ] {
        let mut body = digest.clone();
        body.push(u8::try_from(name.len()).unwrap());
        body.extend_from_slice(name);
        let frame = raw(0x02, &body);
        let n = frame.len();
        check_request_rejected(
            &frame,
            n,
            TrackerWireError::RepositoryByte { byte, position },
        );
        assert_eq!(check_request(&frame), Ok(Some(n)), "the shape is right");
    }
    // The body bound: a SHA-512 digest and the longest name.
    let mut big = u32::try_from(FRAME_LEN_MIN + 65 + 1 + 256)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    big.extend_from_slice(&[1, 0x02]);
    check_request_rejected(
        &big,
        6,
        TrackerWireError::BodyTooLong {
            kind: Kind::GetMetainfo,
            len: 65 + 1 + 256,
            max: 65 + 1 + 255,
        },
    );
    assert_eq!(Repository::new(""), Err(TrackerWireError::RepositoryEmpty));
    assert_eq!(
        Repository::new(&"a".repeat(256)),
        Err(TrackerWireError::RepositoryTooLong { len: 256 })
    );
    assert_eq!(Repository::new("a/b-c_d.e").unwrap().as_str(), "a/b-c_d.e");
}

#[test]
fn bad_fields_rejected() {
    let mut bytes = request_bytes(&announce(1, false, false));
    *bytes.last_mut().unwrap() = 0x04;
    let n = bytes.len();
    check_request_rejected(&bytes, n, TrackerWireError::BadFlags(0x04));

    let ok_announce = Response::Announce {
        interval: Duration::from_millis(1),
        peers: vec![peer(1, "1.2.3.4:5", false, false)],
    };
    let good = response_bytes(&ok_announce);
    let n = good.len();
    let mut zero_interval = good.clone();
    zero_interval[6..10].copy_from_slice(&[0; 4]);
    check_response_rejected(
        &zero_interval,
        n,
        TrackerWireError::Interval { interval_ms: 0 },
    );
    let mut family = good.clone();
    family[12 + 21] = 5;
    check_response_rejected(&family, n, TrackerWireError::AddressFamily(5));
    let mut peer_flags = good.clone();
    peer_flags[12 + 20] = 0x80;
    check_response_rejected(&peer_flags, n, TrackerWireError::BadFlags(0x80));
    let mut too_many = good.clone();
    too_many[10..12].copy_from_slice(&1025u16.to_be_bytes());
    check_response_rejected(
        &too_many,
        n,
        TrackerWireError::TooManyPeers {
            n_peers: 1025,
            max: 1024,
        },
    );
    let mut fewer_than_listed = good.clone();
    fewer_than_listed[10..12].copy_from_slice(&2u16.to_be_bytes());
    check_response_rejected(
        &fewer_than_listed,
        n,
        TrackerWireError::BodyTruncated {
            kind: Kind::AnnounceResponse,
        },
    );
    let mut trailing = good.clone();
    trailing[10..12].copy_from_slice(&0u16.to_be_bytes());
    check_response_rejected(
        &trailing,
        n,
        TrackerWireError::BodyLength {
            kind: Kind::AnnounceResponse,
            expected: 6,
            actual: 6 + 28,
        },
    );

    check_response_rejected(
        &raw(0x85, &[9, 0, 0]),
        9,
        TrackerWireError::UnknownErrorCode(9),
    );
    check_response_rejected(
        &raw(0x85, &[1, 0, 2, 0xff, 0xfe]),
        11,
        TrackerWireError::ErrorMessageNotUtf8,
    );
    check_response_rejected(
        &raw(0x85, &[1, 1, 1]),
        9,
        TrackerWireError::ErrorMessageTooLong { len: 257 },
    );
}

#[test]
fn error_constructor_shortens_at_char_boundary() {
    let long = "é".repeat(200); // 400 bytes
    let Response::Error { code, message } = Response::error(ErrorCode::Internal, &long) else {
        panic!("not an error");
    };
    assert_eq!(code, ErrorCode::Internal);
    assert_eq!(message.len(), 256);
    let bytes = response_bytes(&Response::error(ErrorCode::Internal, &long));
    assert!(matches!(parse_response(&bytes), Ok(Some(_))));
}

#[test]
fn interval_is_whole_milliseconds() {
    let bytes = response_bytes(&Response::Announce {
        interval: Duration::from_micros(4_999_999),
        peers: Vec::new(),
    });
    let Ok(Some((Response::Announce { interval, .. }, _))) = parse_response(&bytes) else {
        panic!("not an announce");
    };
    assert_eq!(interval, Duration::from_millis(4999));
    let bytes = response_bytes(&Response::Announce {
        interval: Duration::ZERO,
        peers: Vec::new(),
    });
    let Ok(Some((Response::Announce { interval, .. }, _))) = parse_response(&bytes) else {
        panic!("not an announce");
    };
    assert_eq!(interval, Duration::from_millis(1));
}

#[test]
fn largest_metainfo_fits() {
    let metainfo = vec![0u8; METAINFO_LEN_MAX];
    let bytes = request_bytes(&Request::PutMetainfo { metainfo });
    assert_eq!(bytes.len(), 4 + FRAME_LEN_MAX);
    assert_eq!(check_request(&bytes), Ok(Some(bytes.len())));
}

#[test]
#[should_panic(expected = "exceed PEERS_MAX")]
fn encoding_too_many_peers_panics() {
    let peers = vec![peer(1, "1.1.1.1:1", false, false); PEERS_MAX + 1];
    response_bytes(&Response::Announce {
        interval: Duration::from_secs(1),
        peers,
    });
}

#[test]
fn error_messages_name_the_values() {
    let cases = [
        (
            TrackerWireError::UnknownKind {
                byte: 0x84,
                direction: Direction::Request,
            },
            "unknown request kind 0x84",
        ),
        (
            TrackerWireError::BodyTooLong {
                kind: Kind::GetMetainfo,
                len: 99,
                max: 65,
            },
            "get-metainfo frame body of 99 bytes exceeds the maximum of 65",
        ),
        (
            TrackerWireError::Interval { interval_ms: 0 },
            "interval of 0 ms is outside 1..=7200000 ms",
        ),
    ];
    for (error, fragment) in cases {
        let message = error.to_string();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
}

// ---- properties ----------------------------------------------------------------------------

fn arb_digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(Digest::Sha256),
        any::<[u8; 64]>().prop_map(Digest::Sha512),
    ]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let announce = (
        arb_digest(),
        any::<[u8; 32]>(),
        any::<[u8; 20]>(),
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(digest, info_hash, peer_id, port, is_origin, is_complete)| {
                Request::Announce(Announce {
                    digest,
                    info_hash: InfoHash(info_hash),
                    peer_id: PeerId(peer_id),
                    port,
                    is_origin,
                    is_complete,
                })
            },
        );
    prop_oneof![
        announce,
        (arb_digest(), proptest::option::of("[a-z0-9._/-]{1,255}")).prop_map(
            |(digest, repository)| Request::GetMetainfo {
                digest,
                repository: repository.map(|name| Repository::new(&name).unwrap()),
            }
        ),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|metainfo| Request::PutMetainfo { metainfo }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let arb_peer = (any::<[u8; 20]>(), arb_addr(), any::<bool>(), any::<bool>()).prop_map(
        |(id, addr, is_origin, is_complete)| PeerInfo {
            id: PeerId(id),
            addr,
            is_origin,
            is_complete,
        },
    );
    let announce = (
        1..=INTERVAL_MS_MAX,
        proptest::collection::vec(arb_peer, 0..40),
    )
        .prop_map(|(ms, peers)| Response::Announce {
            interval: Duration::from_millis(u64::from(ms)),
            peers,
        });
    let code = proptest::sample::select(ErrorCode::ALL.to_vec());
    prop_oneof![
        announce,
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Response::Metainfo),
        Just(Response::NotFound),
        Just(Response::Ok),
        (code, ".{0,300}").prop_map(|(code, message)| Response::error(code, &message)),
    ]
}

/// Random bytes, random bodies behind plausible headers, or valid frames with flipped bytes,
/// perhaps truncated, followed by random bytes.
fn arb_wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        arb_request().prop_map(|r| request_bytes(&r)),
        arb_response().prop_map(|r| response_bytes(&r)),
    ];
    let mutated = (
        valid,
        proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        proptest::option::of(any::<Index>()),
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(mut bytes, flips, cut, tail)| {
            for (at, mask) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend(tail);
            bytes
        });
    let kind = proptest::sample::select(vec![0x00, 0x01, 0x02, 0x03, 0x04, 0x81, 0x82, 0x85]);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=400),
        (kind, proptest::collection::vec(any::<u8>(), 0..=400))
            .prop_map(|(kind, body)| raw(kind, &body)),
        mutated,
    ]
}

proptest! {
    #[test]
    fn request_round_trip(request in arb_request()) {
        let bytes = request_bytes(&request);
        prop_assert_eq!(parse_request(&bytes), Ok(Some((request, bytes.len()))));
    }

    #[test]
    fn response_round_trip(response in arb_response()) {
        let bytes = response_bytes(&response);
        prop_assert_eq!(parse_response(&bytes), Ok(Some((response, bytes.len()))));
    }

    #[test]
    fn parse_is_canonical_and_in_bounds(bytes in arb_wire_bytes()) {
        if let Ok(Some((request, consumed))) = parse_request(&bytes) {
            prop_assert!(consumed <= bytes.len());
            prop_assert_eq!(request_bytes(&request), &bytes[..consumed]);
        }
        if let Ok(Some((response, consumed))) = parse_response(&bytes) {
            prop_assert!(consumed <= bytes.len());
            prop_assert_eq!(response_bytes(&response), &bytes[..consumed]);
        }
    }

    #[test]
    fn check_agrees_with_parse(bytes in arb_wire_bytes()) {
        match (check_request(&bytes), parse_request(&bytes)) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(n)), Ok(Some((_, consumed)))) => prop_assert_eq!(n, consumed),
            // Field contents beyond the shape are left to parse.
            (Ok(Some(_)), Err(_)) => {}
            (Err(checked), Err(parsed)) => prop_assert_eq!(checked, parsed),
            (checked, parsed) => prop_assert!(false, "check {:?} but parse {:?}", checked, parsed),
        }
        match (check_response(&bytes), parse_response(&bytes)) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(n)), Ok(Some((_, consumed)))) => prop_assert_eq!(n, consumed),
            (Ok(Some(_)), Err(_)) => {}
            (Err(checked), Err(parsed)) => prop_assert_eq!(checked, parsed),
            (checked, parsed) => prop_assert!(false, "check {:?} but parse {:?}", checked, parsed),
        }
    }

    /// Fed a byte at a time, the answer is "need more" until it is final, then stays.
    #[test]
    fn answers_are_stable_as_bytes_arrive(bytes in arb_wire_bytes()) {
        let mut settled = None;
        for end in 0..=bytes.len() {
            let result = parse_response(&bytes[..end]);
            match &settled {
                None if result != Ok(None) => settled = Some(result),
                None => {}
                Some(first) => prop_assert_eq!(first, &result, "prefix of {}", end),
            }
        }
        let mut settled = None;
        for end in 0..=bytes.len() {
            let result = parse_request(&bytes[..end]);
            match &settled {
                None if result != Ok(None) => settled = Some(result),
                None => {}
                Some(first) => prop_assert_eq!(first, &result, "request prefix of {}", end),
            }
        }
    }
}
