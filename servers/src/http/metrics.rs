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

/// One counter family: `name` (the encoder adds `_total`), its help, and its value per shard.
fn counter(
    registry: &mut Registry,
    stats: &EngineStats,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &'static str)],
    get: fn(&ShardStats) -> u64,
) {
    let family = Family::<Labels, Counter>::default();
    for (shard, s) in stats.shards.iter().enumerate() {
        family
            .get_or_create(&labels_of(shard, labels))
            .inc_by(get(s));
    }
    registry.register(name, help, family);
}

/// A counter of seconds kept in microseconds.
fn seconds(
    registry: &mut Registry,
    stats: &EngineStats,
    name: &'static str,
    help: &'static str,
    get: fn(&ShardStats) -> u64,
) {
    let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for (shard, s) in stats.shards.iter().enumerate() {
        family
            .get_or_create(&labels_of(shard, &[]))
            .inc_by(get(s) as f64 / 1e6);
    }
    registry.register(name, help, family);
}

fn labels_of(shard: usize, labels: &[(&'static str, &'static str)]) -> Labels {
    let mut all = vec![("shard", shard.to_string())];
    all.extend(labels.iter().map(|(k, v)| (*k, (*v).to_owned())));
    all
}

fn render(stats: &EngineStats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("shoal");
    let r = &mut registry;
    let received = "Verified piece payload bytes received, by the kind of peer they came from";
    let bytes_in = Family::<Labels, Counter>::default();
    let bytes_out = Family::<Labels, Counter>::default();
    for (shard, s) in stats.shards.iter().enumerate() {
        let of = |kind| labels_of(shard, &[("peer", kind)]);
        bytes_in
            .get_or_create(&of("origin"))
            .inc_by(s.bytes_in_from_origins);
        bytes_in
            .get_or_create(&of("agent"))
            .inc_by(s.bytes_in_from_agents);
        bytes_out
            .get_or_create(&of("origin"))
            .inc_by(s.bytes_out_to_origins);
        bytes_out
            .get_or_create(&of("agent"))
            .inc_by(s.bytes_out_to_agents);
    }
    r.register("piece_bytes_received", received, bytes_in);
    r.register(
        "piece_bytes_sent",
        "Piece payload bytes sent, by the kind of peer they went to",
        bytes_out,
    );
    counter(
        r,
        stats,
        "pieces_verified",
        "Pieces received whose SHA-256 matched",
        &[],
        |s| s.pieces_verified,
    );
    counter(
        r,
        stats,
        "pieces_failed",
        "Pieces received whose SHA-256 did not match",
        &[],
        |s| s.pieces_failed,
    );
    counter(
        r,
        stats,
        "pieces_uploaded",
        "Pieces sent to peers",
        &[],
        |s| s.pieces_uploaded,
    );
    let open = Family::<Labels, Gauge>::default();
    for (shard, s) in stats.shards.iter().enumerate() {
        open.get_or_create(&labels_of(shard, &[]))
            .set(i64::try_from(s.connections_open).unwrap_or(i64::MAX));
    }
    r.register("peer_connections", "Peer connections open now", open);
    counter(
        r,
        stats,
        "peer_connections_opened",
        "Peer connections opened, inbound and outbound",
        &[],
        |s| s.connections_opened,
    );
    counter(
        r,
        stats,
        "dials_failed",
        "Dials to peers that failed",
        &[],
        |s| s.dials_failed,
    );
    counter(
        r,
        stats,
        "peers_blacklisted",
        "Peers blacklisted for a bad piece (once per swarm)",
        &[],
        |s| s.peers_blacklisted,
    );
    counter(
        r,
        stats,
        "handoffs",
        "Accepted connections handed to another shard after their handshake",
        &[],
        |s| s.handoffs,
    );
    counter(
        r,
        stats,
        "piece_requests_sent",
        "Piece requests written to peers",
        &[],
        |s| s.requests_sent,
    );
    seconds(
        r,
        stats,
        "piece_request_queue_seconds",
        "Time piece requests waited to reach the socket, summed",
        |s| s.request_queue_us,
    );
    counter(
        r,
        stats,
        "piece_requests_answered",
        "Piece requests whose piece header arrived",
        &[],
        |s| s.requests_answered,
    );
    seconds(
        r,
        stats,
        "piece_request_answer_seconds",
        "Time from a piece request reaching the socket to its piece header arriving, summed",
        |s| s.request_answer_us,
    );
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
