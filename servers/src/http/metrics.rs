//! `GET /metrics` on the agent and the origin: the engine's counters in the Prometheus text
//! format, one series per shard (label `shard`; sum over it for the process). What each
//! counts is documented on `shoal_engine::ShardStats`. For dashboards, and for `shoal-perf`,
//! which reads every agent's after a run.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_engine::{EngineStats, ShardStats};
use std::sync::atomic::AtomicU64;

use super::{ErrorCode, LocalBody, OciError, method_not_allowed};

/// The path of the engine's metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The text format's content type.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The answer to `method` on [`METRICS_PATH`].
pub fn metrics_response(method: &Method, stats: &EngineStats) -> Response<LocalBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed(method, "GET, HEAD");
    }
    let text = match render(stats) {
        Ok(text) => text,
        Err(error) => {
            return OciError::new(ErrorCode::Unknown, format!("encoding metrics: {error}"))
                .into_response();
        }
    };
    let mut response = Response::new(if method == Method::HEAD {
        LocalBody::empty()
    } else {
        LocalBody::full(text)
    });
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
}

/// A per-shard figure: its name, its help, and how to read it off a shard's counters.
type Figure = (&'static str, &'static str, fn(&ShardStats) -> u64);

/// Plain counters (the encoder adds `_total` to each name).
const COUNTERS: [Figure; 9] = [
    (
        "pieces_verified",
        "Pieces received whose SHA-256 matched",
        |s| s.pieces_verified,
    ),
    (
        "pieces_failed",
        "Pieces received whose SHA-256 did not match",
        |s| s.pieces_failed,
    ),
    ("pieces_uploaded", "Pieces sent to peers", |s| {
        s.pieces_uploaded
    }),
    (
        "peer_connections_opened",
        "Peer connections opened, inbound and outbound",
        |s| s.connections_opened,
    ),
    ("dials_failed", "Dials to peers that failed", |s| {
        s.dials_failed
    }),
    (
        "peers_blacklisted",
        "Peers blacklisted for a bad piece (once per swarm)",
        |s| s.peers_blacklisted,
    ),
    (
        "handoffs",
        "Accepted connections handed to another shard after their handshake",
        |s| s.handoffs,
    ),
    (
        "piece_requests_sent",
        "Piece requests written to peers",
        |s| s.requests_sent,
    ),
    (
        "piece_requests_answered",
        "Piece requests whose piece header arrived",
        |s| s.requests_answered,
    ),
];

/// Counters of seconds, kept by the engine in microseconds.
const SECONDS: [Figure; 2] = [
    (
        "piece_request_queue_seconds",
        "Time piece requests waited to reach the socket, summed",
        |s| s.request_queue_us,
    ),
    (
        "piece_request_answer_seconds",
        "Time from a piece request reaching the socket to its piece header arriving, summed",
        |s| s.request_answer_us,
    ),
];

fn labels_of(shard: usize, peer: Option<&'static str>) -> Labels {
    let mut labels = vec![("shard", shard.to_string())];
    labels.extend(peer.map(|kind| ("peer", kind.to_owned())));
    labels
}

fn render(stats: &EngineStats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("shoal");
    let bytes_in = Family::<Labels, Counter>::default();
    let bytes_out = Family::<Labels, Counter>::default();
    let open = Family::<Labels, Gauge>::default();
    for (shard, s) in stats.shards.iter().enumerate() {
        for (kind, received, sent) in [
            ("origin", s.bytes_in_from_origins, s.bytes_out_to_origins),
            ("agent", s.bytes_in_from_agents, s.bytes_out_to_agents),
        ] {
            let labels = labels_of(shard, Some(kind));
            bytes_in.get_or_create(&labels).inc_by(received);
            bytes_out.get_or_create(&labels).inc_by(sent);
        }
        open.get_or_create(&labels_of(shard, None))
            .set(i64::try_from(s.connections_open).unwrap_or(i64::MAX));
    }
    registry.register(
        "piece_bytes_received",
        "Verified piece payload bytes received, by the kind of peer they came from",
        bytes_in,
    );
    registry.register(
        "piece_bytes_sent",
        "Piece payload bytes sent, by the kind of peer they went to",
        bytes_out,
    );
    registry.register("peer_connections", "Peer connections open now", open);
    for (name, help, get) in COUNTERS {
        let family = Family::<Labels, Counter>::default();
        for (shard, s) in stats.shards.iter().enumerate() {
            family.get_or_create(&labels_of(shard, None)).inc_by(get(s));
        }
        registry.register(name, help, family);
    }
    for (name, help, get) in SECONDS {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (shard, s) in stats.shards.iter().enumerate() {
            family
                .get_or_create(&labels_of(shard, None))
                .inc_by(get(s) as f64 / 1e6);
        }
        registry.register(name, help, family);
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_shard_is_a_series_and_seconds_are_seconds() {
        let shard = |n: u64| ShardStats {
            bytes_in_from_origins: n,
            bytes_in_from_agents: 2 * n,
            requests_sent: 3,
            request_queue_us: 1_500_000,
            connections_open: n,
            ..ShardStats::default()
        };
        let stats = EngineStats {
            total: ShardStats::default(),
            shards: vec![shard(10), shard(20)],
        };
        let text = render(&stats).unwrap();
        for line in [
            r#"shoal_piece_bytes_received_total{shard="0",peer="origin"} 10"#,
            r#"shoal_piece_bytes_received_total{shard="1",peer="agent"} 40"#,
            r#"shoal_piece_requests_sent_total{shard="1"} 3"#,
            r#"shoal_piece_request_queue_seconds_total{shard="0"} 1.5"#,
            r#"shoal_peer_connections{shard="1"} 20"#,
            "# TYPE shoal_pieces_verified counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn only_get_and_head() {
        let stats = EngineStats::default();
        assert_eq!(metrics_response(&Method::GET, &stats).status(), 200);
        assert_eq!(metrics_response(&Method::HEAD, &stats).status(), 200);
        assert_eq!(metrics_response(&Method::POST, &stats).status(), 405);
    }
}
