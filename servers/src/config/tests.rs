use std::path::{Path, PathBuf};

use shoal_engine::EngineConfig;

use super::{
    AgentFile, BuildIndexFile, ConfigError, DevFile, HttpSection, OriginFile, ProxyFile,
    TrackerFile, defaults, load, parse,
};
use crate::http::HttpConfig;
use crate::origin::OriginConfig;
use crate::tracker::TrackerServerConfig;
use crate::uploads::UploadLimits;

/// Every component config shipped in `configs/`; each has a test below that parses it and
/// checks that it states the defaults.
const SHIPPED: [&str; 6] = [
    "agent.toml",
    "build-index.toml",
    "dev.toml",
    "origin.toml",
    "proxy.toml",
    "tracker.toml",
];

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

fn engine_defaults() -> EngineConfig {
    EngineConfig::new("/data", vec!["127.0.0.1:7100".parse().unwrap()])
}

/// Applying the file's `[http]` over the defaults changes nothing.
fn assert_http_defaults(section: &HttpSection) {
    let mut http = HttpConfig::default();
    section.apply(&mut http).unwrap();
    assert_eq!(format!("{http:?}"), format!("{:?}", HttpConfig::default()));
}

/// Component configs are the files in `configs/` that open with `# shoal <component>
/// --config`; every one of them must be in [`SHIPPED`] (and so checked below).
#[test]
fn every_shipped_component_config_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir(shipped(""))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let first = text.lines().next().unwrap_or_default();
            first.starts_with("# shoal ") && first.contains(" --config ")
        })
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, SHIPPED);
}

#[test]
fn the_shipped_agent_config_parses_and_states_the_defaults() {
    let file: AgentFile = load(&shipped("agent.toml")).unwrap();
    assert_eq!(file.agent.listen, Some(defaults::AGENT_LISTEN));
    // Commented out: no default (manifests, tags and pushes are then refused).
    assert_eq!(file.agent.origin, None);
    assert_eq!(file.agent.build_index, None);
    assert_eq!(file.agent.proxy, None);
    assert_eq!(file.agent.replicas, Some(crate::cluster::REPLICAS_DEFAULT));
    assert_eq!(file.engine.peer_listen, Some(defaults::PEER_LISTEN));
    // Every value in the example is the default: applying it changes nothing.
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    let defaults = engine_defaults();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    assert_http_defaults(&file.http);
}

#[test]
fn the_shipped_origin_config_parses_and_states_the_defaults() {
    let file: OriginFile = load(&shipped("origin.toml")).unwrap();
    assert_eq!(file.origin.listen, Some(defaults::ORIGIN_LISTEN));
    assert_eq!(file.engine.peer_listen, Some(defaults::PEER_LISTEN));
    let cluster = crate::cluster::ClusterConfig::new(Vec::new());
    assert_eq!(file.origin.cluster, None);
    assert!(file.backend.is_empty());
    assert_eq!(
        file.origin.namespace.as_deref(),
        Some(crate::origin::NAMESPACE_DEFAULT)
    );
    assert_eq!(file.origin.replicas, Some(cluster.replicas));
    assert_eq!(
        file.origin.health_interval.map(|s| s.0),
        Some(cluster.health_interval)
    );
    assert_eq!(
        file.origin.repair_interval.map(|s| s.0),
        Some(crate::origin::REPAIR_INTERVAL_DEFAULT)
    );
    let mut origin = OriginConfig::default();
    file.origin.overlay(&mut origin).unwrap();
    assert_eq!(
        format!("{origin:?}"),
        format!("{:?}", OriginConfig::default())
    );
    // An origin's engine defaults (more connections than an agent's).
    let mut config = engine_defaults().into_origin();
    file.engine.apply(&mut config).unwrap();
    let defaults = engine_defaults().into_origin();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    assert_http_defaults(&file.http);
}

#[test]
fn the_shipped_build_index_config_parses_and_states_the_defaults() {
    let file: BuildIndexFile = load(&shipped("build-index.toml")).unwrap();
    assert_eq!(file.build_index.listen, Some(defaults::BUILD_INDEX_LISTEN));
    assert_eq!(file.build_index.data_dir, None);
    assert!(file.backend.is_empty());
    let mut backing = crate::build_index::backing::BackingConfig::default();
    let before = backing.upstream_tag_ttl;
    file.build_index.overlay(&mut backing);
    assert_eq!(backing.upstream_tag_ttl, before);
    assert_http_defaults(&file.http);
}

#[test]
fn the_shipped_proxy_config_parses_and_states_the_defaults() {
    let file: ProxyFile = load(&shipped("proxy.toml")).unwrap();
    let proxy = &file.proxy;
    assert_eq!(proxy.listen, Some(defaults::PROXY_LISTEN));
    assert_eq!(
        (
            proxy.data_dir.as_ref(),
            proxy.origin.as_ref(),
            proxy.build_index
        ),
        (None, None, None)
    );
    assert_eq!(proxy.replicas, Some(crate::cluster::REPLICAS_DEFAULT));
    let mut limits = UploadLimits::default();
    let mut sweep_interval = defaults::UPLOAD_SWEEP_INTERVAL;
    proxy
        .uploads
        .apply(&mut limits, &mut sweep_interval)
        .unwrap();
    assert_eq!(limits, UploadLimits::default());
    assert_eq!(sweep_interval, defaults::UPLOAD_SWEEP_INTERVAL);
    assert_http_defaults(&file.http);
}

#[test]
fn the_shipped_dev_config_parses_and_states_the_defaults() {
    let file: DevFile = load(&shipped("dev.toml")).unwrap();
    let dev = &file.dev;
    assert_eq!(
        dev.data_dir.as_deref(),
        Some(Path::new(defaults::DEV_DATA_DIR))
    );
    assert_eq!(dev.agent_listen, Some(defaults::DEV_AGENT_LISTEN));
    assert_eq!(dev.ports_from, Some(defaults::DEV_PORTS_FROM));
    assert_eq!(dev.shards, Some(defaults::DEV_SHARDS));
    // The engines' overrides are all commented out: each engine keeps its defaults.
    assert_eq!(
        format!("{:?}", file.engine),
        format!("{:?}", super::EngineSection::default())
    );
}

#[test]
fn upload_limits_follow_the_file_and_are_checked_by_key() {
    let apply = |text: &str| {
        let file: ProxyFile = parse(Path::new("proxy.toml"), text).unwrap();
        let mut limits = UploadLimits::default();
        let mut sweep_interval = defaults::UPLOAD_SWEEP_INTERVAL;
        file.proxy
            .uploads
            .apply(&mut limits, &mut sweep_interval)
            .map(|()| (limits, sweep_interval))
    };
    // A smaller blob bound takes the chunk bound down with it unless the file sets it.
    let (limits, sweep) =
        apply("[proxy.uploads]\nblob_bytes_max = \"1GiB\"\nsweep_interval = \"5s\"\n").unwrap();
    assert_eq!(limits.blob_bytes_max, 1 << 30);
    assert_eq!(limits.chunk_bytes_max, 1 << 30);
    assert_eq!(sweep.as_secs(), 5);
    let (limits, _) =
        apply("[proxy.uploads]\nblob_bytes_max = \"1GiB\"\nchunk_bytes_max = \"8MiB\"\n").unwrap();
    assert_eq!(limits.chunk_bytes_max, 8 << 20);
    for (text, key) in [
        ("[proxy.uploads]\nsessions_max = 0\n", "sessions_max"),
        ("[proxy.uploads]\nblob_bytes_max = 0\n", "blob_bytes_max"),
        (
            "[proxy.uploads]\nblob_bytes_max = \"1GiB\"\nchunk_bytes_max = \"2GiB\"\n",
            "chunk_bytes_max",
        ),
        ("[proxy.uploads]\nidle_timeout = \"0s\"\n", "idle_timeout"),
        ("[proxy.uploads]\nsweep_interval = 0\n", "sweep_interval"),
    ] {
        let error = apply(text).unwrap_err();
        assert!(error.contains(key), "{text:?}: {error}");
    }
}

#[test]
fn each_component_file_refuses_unknown_keys_by_name() {
    fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str, key: &str) {
        match parse::<T>(Path::new("c.toml"), text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains(key), "{message:?} does not name {key}");
                assert!(message.contains("line"), "{message:?} gives no line");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    refused::<AgentFile>("[agent]\nproxi = \"127.0.0.1:1\"\n", "proxi");
    refused::<OriginFile>("[origin]\nblob_max = 1\n", "blob_max");
    refused::<OriginFile>("[origin]\nlisten = \"localhost\"\n", "listen");
    refused::<BuildIndexFile>("[build-index]\n", "build-index");
    refused::<BuildIndexFile>("[build_index]\ndatadir = \"x\"\n", "datadir");
    refused::<ProxyFile>("[proxy.uploads]\nsession_max = 1\n", "session_max");
    refused::<ProxyFile>("[proxy]\nengine = 1\n", "engine");
    refused::<DevFile>("[dev]\nport_from = 1\n", "port_from");
    refused::<DevFile>("[dev]\nports_from = 70000\n", "ports_from");
    refused::<DevFile>("[engine]\nshard = 1\n", "shard");
    refused::<DevFile>("[agent]\n", "agent");
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
        evict_interval = "30s"
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
    assert_eq!(
        config.evict_interval,
        Some(std::time::Duration::from_secs(30))
    );
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
    let file: AgentFile = parse(
        Path::new("t.toml"),
        "[engine.store]\nevict_interval = \"0s\"\n",
    )
    .unwrap();
    let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
    assert!(error.contains("engine.store.evict_interval"), "{error}");
    let file: AgentFile = parse(
        Path::new("t.toml"),
        "[engine.store]\nevict_interval = \"never\"\n",
    )
    .unwrap();
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    assert_eq!(config.evict_interval, None);
    let file: AgentFile = parse(Path::new("t.toml"), "[engine]\nconnections_max = 0\n").unwrap();
    let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
    assert!(error.contains("connections_max"), "{error}");
    for bad in ["0", "1025"] {
        let text = format!("[engine]\nuploads_per_stripe = {bad}\n");
        let file: AgentFile = parse(Path::new("t.toml"), &text).unwrap();
        let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
        assert!(error.contains("engine.uploads_per_stripe"), "{error}");
        assert!(error.contains(bad), "{error}");
    }
    let file: AgentFile = parse(Path::new("t.toml"), "[engine]\nuploads_per_stripe = 3\n").unwrap();
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    assert_eq!(config.swarm.uploads_active_max, 3);
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

#[test]
fn tcp_congestion_is_checked_against_the_kernel() {
    let file: AgentFile =
        parse(Path::new("t.toml"), "[engine]\ntcp_congestion = \"reno\"\n").unwrap();
    let mut config = engine_defaults();
    file.engine.apply(&mut config).unwrap();
    assert_eq!(config.tcp_congestion.as_deref(), Some("reno"));
    for bad in ["no_such_cc", "", "re no"] {
        let text = format!("[engine]\ntcp_congestion = \"{bad}\"\n");
        let file: AgentFile = parse(Path::new("t.toml"), &text).unwrap();
        let error = file.engine.apply(&mut engine_defaults()).unwrap_err();
        assert!(error.contains("engine.tcp_congestion"), "{error}");
        assert!(error.contains("available"), "{error}");
    }
}
