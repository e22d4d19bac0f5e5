use std::path::{Path, PathBuf};

use shoal_engine::EngineConfig;

use super::{AgentFile, ConfigError, TrackerFile, load, parse};
use crate::http::HttpConfig;
use crate::tracker::TrackerServerConfig;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

fn engine_defaults() -> EngineConfig {
    EngineConfig::new("/data", vec!["127.0.0.1:7100".parse().unwrap()])
}

#[test]
fn the_shipped_agent_config_parses_and_states_the_defaults() {
    let file: AgentFile = load(&shipped("agent.toml")).unwrap();
    assert_eq!(file.agent.listen, Some("127.0.0.1:5000".parse().unwrap()));
    // Every value in the example is the default: applying it changes nothing.
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    let defaults = engine_defaults();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    let mut http = HttpConfig::default();
    file.http.apply(&mut http).unwrap();
    assert_eq!(format!("{http:?}"), format!("{:?}", HttpConfig::default()));
}

#[test]
fn the_shipped_tracker_config_parses_and_states_the_defaults() {
    let file: TrackerFile = load(&shipped("tracker.toml")).unwrap();
    let mut config = TrackerServerConfig::default();
    file.tracker.apply(&mut config).unwrap();
    assert_eq!(
        format!("{config:?}"),
        format!("{:?}", TrackerServerConfig::default())
    );
}

#[test]
fn values_with_units_reach_the_engine() {
    let text = r#"
        [engine]
        data_dir = "/srv/cache"
        trackers = ["10.0.0.1:7100", "10.0.0.2:7100"]
        egress_limit = "1Gbit/s"
        receive_buffer_per_shard = "8MiB"
        tracker_timeout = "500ms"
        driver = "poll"
        upload_path = "copy"
        [engine.store]
        evict_idle_after = "never"
        evict_age_max = "7d"
    "#;
    let file: AgentFile = parse(Path::new("t.toml"), text).unwrap();
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    assert_eq!(config.data_dir, Path::new("/srv/cache"));
    assert_eq!(config.trackers.len(), 2);
    assert_eq!(config.egress_bytes_per_s, Some(125_000_000));
    assert_eq!(config.receive_buffer_bytes_per_shard, 8 << 20);
    assert_eq!(config.tracker_timeout.as_millis(), 500);
    assert_eq!(config.driver, shoal_engine::Driver::Poll);
    assert_eq!(config.store.evict_idle_after, None);
    assert_eq!(
        config.store.evict_age_max,
        Some(std::time::Duration::from_secs(7 * 86_400))
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let cases = [
        ("[agent]\nlisten = \"127.0.0.1:5000\"\nlisen = 1\n", "lisen"),
        ("[engine]\nshard = 2\n", "shard"),
        ("[engine.store]\nevict_idle = \"1h\"\n", "evict_idle"),
        ("[enigne]\n", "enigne"),
        ("[engine]\negress_limit = \"fast\"\n", "egress_limit"),
        (
            "[engine]\ntracker_timeout = \"2 weeks\"\n",
            "tracker_timeout",
        ),
        ("[engine]\ndriver = \"uring\"\n", "driver"),
    ];
    for (text, key) in cases {
        match parse::<AgentFile>(Path::new("agent.toml"), text) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, Path::new("agent.toml"));
                assert!(message.contains(key), "{message:?} does not name {key}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn unusable_values_are_refused_when_applied() {
    let file: AgentFile = parse(
        Path::new("t.toml"),
        "[engine.store]\ndisk_high_watermark = 1.5\n",
    )
    .unwrap();
    let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
    assert!(error.contains("watermark"), "{error}");
    let file: AgentFile = parse(Path::new("t.toml"), "[engine]\nconnections_max = 0\n").unwrap();
    let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
    assert!(error.contains("connections_max"), "{error}");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    match load::<AgentFile>(Path::new("/nonexistent/agent.toml")) {
        Err(ConfigError::Read { path, .. }) => {
            assert_eq!(path, Path::new("/nonexistent/agent.toml"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tracker_shards_and_origins_reach_the_server_config() {
    let file: TrackerFile = parse(
        Path::new("tracker.toml"),
        "[tracker]\nshards = 3\norigins = [\"127.0.0.1:7200\", \"127.0.0.2:7200\"]\n",
    )
    .unwrap();
    let mut config = TrackerServerConfig::default();
    file.tracker.apply(&mut config).unwrap();
    assert_eq!(config.shards, 3);
    assert_eq!(
        config.origins,
        vec![
            "127.0.0.1:7200".parse().unwrap(),
            "127.0.0.2:7200".parse().unwrap()
        ]
    );
    for (text, fragment) in [
        ("[tracker]\nshards = 0\n", "shards must be 1 to 256, not 0"),
        (
            "[tracker]\norigins = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
            "origins lists 127.0.0.1:1 twice",
        ),
    ] {
        let file: TrackerFile = parse(Path::new("tracker.toml"), text).unwrap();
        let error = file
            .tracker
            .apply(&mut TrackerServerConfig::default())
            .unwrap_err();
        assert!(error.contains(fragment), "{error}");
    }
    for (text, key) in [
        ("[tracker]\norigin = [\"127.0.0.1:1\"]\n", "origin"),
        ("[tracker]\norigins = [\"not an address\"]\n", "origins"),
        ("[tracker]\nshards = \"many\"\n", "shards"),
    ] {
        match parse::<TrackerFile>(Path::new("tracker.toml"), text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains(key), "{message:?} does not name {key}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}
