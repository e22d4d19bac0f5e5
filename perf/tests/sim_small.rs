//! Whole simulations, in process: small fleets that must complete, replay exactly from their
//! seed, and change with it.

use shoal_perf::report::Report;
use shoal_perf::sim::{HostOutcome, Sim};
use shoal_perf::topology::Topology;

const SMALL: &str = r#"
    seed = 7
    time_limit_s = 60
    [hosts]
    count = 30
    upload_bytes_per_s = "1Gbit/s"
    download_bytes_per_s = "1Gbit/s"
    latency_ms = 0.5
    latency_jitter_ms = 0.5
    [origins]
    count = 2
    upload_bytes_per_s = "1Gbit/s"
    download_bytes_per_s = "1Gbit/s"
    [[blobs]]
    size = "3MiB"
    [[blobs]]
    size = "1000000"
    [pieces]
    piece_len = "64KiB"
    pieces_per_stripe = 16
"#;

fn run(text: &str, seed: Option<u64>) -> (Sim, Topology) {
    let mut topology = Topology::from_toml_str(text).expect("test topology parses");
    if let Some(seed) = seed {
        topology.seed = seed;
    }
    let mut sim = Sim::new(&topology).expect("simulation starts");
    sim.run();
    (sim, topology)
}

fn agents(sim: &Sim) -> Vec<HostOutcome> {
    sim.outcomes()
        .into_iter()
        .filter(|outcome| !outcome.is_origin)
        .collect()
}

#[test]
fn every_host_completes() {
    let (sim, topology) = run(SMALL, None);
    let outcomes = agents(&sim);
    assert_eq!(outcomes.len(), 30);
    for outcome in &outcomes {
        assert!(
            outcome.completion_s.is_some(),
            "host {} did not finish ({} stripes left)",
            outcome.host,
            outcome.stripes_left
        );
    }
    let report = Report::new("small", &topology, &sim, 0.0);
    assert_eq!((report.completed, report.unfinished), (30, 0));
    assert!(report.lower_bound_s > 0.0 && report.p50_s >= report.lower_bound_s);
    assert!(report.p50_efficiency > 0.0 && report.p50_efficiency <= 1.0);
    let counters = sim.counters();
    // Every agent received every piece at least once; origins and peers both served.
    let pieces_per_agent = (3 << 20) / (64 << 10) + 1_000_000u64.div_ceil(64 << 10);
    assert!(
        counters.pieces_valid >= 30 * pieces_per_agent,
        "{counters:?}"
    );
    assert!(counters.origin_bytes > 0 && counters.peer_bytes > 0);
    assert_eq!(counters.pieces_invalid, 0);
    let json = report.to_json_line();
    for key in [
        "\"hosts\":30",
        "\"p99_s\"",
        "\"origin_copies\"",
        "\"unfinished\":0",
    ] {
        assert!(json.contains(key), "{key} missing from {json}");
    }
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let (first, _) = run(SMALL, None);
    let (again, _) = run(SMALL, None);
    let (other, _) = run(SMALL, Some(8));
    assert_eq!(agents(&first), agents(&again));
    assert_eq!(first.counters(), again.counters());
    assert_eq!(first.timeline(), again.timeline());
    assert_ne!(agents(&first), agents(&other));
}

#[test]
fn liars_departures_and_late_joiners() {
    let text = SMALL.replace(
        "latency_jitter_ms = 0.5",
        "latency_jitter_ms = 0.5\n\
         liar_fraction = 0.1\n\
         depart_fraction = 0.1\n\
         depart_at_s = 0.02\n\
         late_join_fraction = 0.2\n\
         late_join_at_s = 0.5\n\
         join_spread_s = 0.05",
    );
    let (sim, topology) = run(&text, None);
    let report = Report::new("mixed", &topology, &sim, 0.0);
    assert_eq!((report.liars, report.departed), (3, 3));
    assert_eq!(report.counted, 24);
    assert_eq!(report.unfinished, 0, "{}", report.to_table());
    let counters = sim.counters();
    assert!(counters.pieces_invalid > 0, "liars were never asked");
    assert!(counters.blacklistings > 0, "liars were never blacklisted");
    assert!(counters.closes_bad_piece > 0);
    // Late joiners' times are measured from their own join.
    let late: Vec<HostOutcome> = agents(&sim)
        .into_iter()
        .filter(|outcome| outcome.join_s == 0.5)
        .collect();
    assert_eq!(late.len(), 6);
    assert!(late.iter().all(|outcome| outcome.completion_s.is_some()));
}

#[test]
fn a_run_that_cannot_finish_stops_at_its_time_limit() {
    // Origins at 1 kB/s cannot deliver 4 MB in 2 s: the run must stop and report.
    let text = SMALL
        .replace("time_limit_s = 60", "time_limit_s = 2")
        .replace(
            "[origins]\n    count = 2\n    upload_bytes_per_s = \"1Gbit/s\"",
            "[origins]\n    count = 2\n    upload_bytes_per_s = \"1kB/s\"",
        );
    let (sim, topology) = run(&text, None);
    let report = Report::new("starved", &topology, &sim, 0.0);
    assert_eq!(report.unfinished, 30);
    assert!(
        report.virtual_end_s <= 2.0 + 1e-9,
        "{}",
        report.virtual_end_s
    );
    assert!(report.to_table().contains("UNFINISHED"));
}

#[test]
fn streaming_readers_change_the_order_and_everyone_still_completes() {
    let streaming = SMALL.replace(
        "latency_ms = 0.5\n",
        "latency_ms = 0.5\n    streaming_readers = true\n",
    );
    assert_ne!(streaming, SMALL);
    let (with_readers, _) = run(&streaming, None);
    let (without, _) = run(SMALL, None);
    let outcomes = agents(&with_readers);
    assert!(outcomes.iter().all(|o| o.completion_s.is_some()));
    // The readers' wanted pieces changed which pieces went where: the runs differ.
    let times =
        |sim: &Sim| -> Vec<Option<f64>> { agents(sim).iter().map(|o| o.completion_s).collect() };
    assert_ne!(times(&with_readers), times(&without));
}
