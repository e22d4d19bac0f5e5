//! The origin cluster on the command line: `--origin` (repeated for a cluster) and
//! `--replicas` for the proxy and the agent, over the `origin`/`replicas` keys of their
//! config files; and the health check each of them runs once at start-up.

use std::time::Duration;

use clap::Args;
use shoal_servers::cluster::{ClusterConfig, OriginCluster};
use shoal_servers::config::Members;
use shoal_servers::config::units::parse_duration;
use shoal_servers::http::client::HttpClient;

#[derive(Args, Debug, Clone)]
pub struct OriginsArgs {
    /// An origin's internal API, `host:port` (a DNS name stands for every address it
    /// resolves to); repeat it for a cluster of origins.
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// Copies of each blob in the origin cluster [default: 3].
    #[arg(long)]
    pub replicas: Option<usize>,
}

impl OriginsArgs {
    /// The cluster's settings from the flags, else the file's keys; `None` when neither
    /// names an origin.
    pub fn cluster_config(
        &self,
        file_members: Option<&Members>,
        file_replicas: Option<usize>,
    ) -> Option<ClusterConfig> {
        let members = if self.origins.is_empty() {
            file_members.cloned()?.into_vec()
        } else {
            self.origins.clone()
        };
        let mut config = ClusterConfig::new(members);
        if let Some(replicas) = self.replicas.or(file_replicas) {
            config.replicas = replicas;
        }
        Some(config)
    }
}

/// A `--…-interval` value: a duration with its unit ("2s", "500ms", "1m").
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Resolves the cluster (DNS), refusing a member that does not resolve, by name.
pub fn resolve(config: ClusterConfig) -> Result<OriginCluster, String> {
    OriginCluster::resolve(config)
}

/// Checks every member once and prints a warning naming each that does not answer (the
/// component still starts: an origin may come up later, and until it does the others
/// serve), then starts the periodic health checks on the current runtime.
pub async fn watch(cluster: &OriginCluster, client: &HttpClient, component: &str) {
    for (addr, why) in cluster.check_all(client).await {
        eprintln!(
            "shoal {component}: origin {addr} does not answer ({why}); carrying on without it"
        );
    }
    cluster.spawn_health_checks(client.clone());
}
