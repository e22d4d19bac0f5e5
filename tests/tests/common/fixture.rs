//! A whole registry in this process: a tracker, an origin, a build-index, a proxy and an
//! agent given all three, on loopback, with helpers to push through the agent.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_engine::Engine;
use shoal_proto::Digest;
use shoal_servers::agent::Agent;
use shoal_servers::build_index::server::BuildIndex;
use shoal_servers::build_index::{OCI_MANIFEST, RecoveryReport};
use shoal_servers::http::client::HttpClient;
use shoal_servers::origin::{Origin, OriginConfig};
use shoal_servers::proxy::Proxy;
use shoal_servers::registry::Registry;
use shoal_servers::uploads::{UploadLimits, UploadStore};

use super::{Reply, Served, bytes, curl, engine, engine_config, scratch, tracker};

pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Fixture {
    pub dir: PathBuf,
    pub origin: Engine,
    pub agent: Engine,
    /// The build-index's address, the same across [`Fixture::restart_build_index`].
    pub index_addr: SocketAddr,
    /// The build-index's store.
    pub index_root: PathBuf,
    /// The build-index's server (`None` while it is stopped).
    index: Option<Served>,
    // Dropped first (declaration order): the servers before the engines they use.
    servers: Vec<Served>,
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let dir = scratch("pull", name);
        let tracker = tracker();
        let origin = Engine::start(engine_config(&dir, "origin", tracker).into_origin()).unwrap();
        let served = origin.clone();
        let origin_server = Served::start(move || async move {
            Origin::start(served, OriginConfig::default())
                .await
                .unwrap()
                .0
        });
        let index_root = dir.join("tags");
        let (index_server, _) = start_build_index(&index_root, None);
        let (origin_addr, index_addr) = (origin_server.addr, index_server.addr);
        let uploads = dir.join("uploads");
        let proxy_server = Served::start(move || async move {
            let (store, _) = UploadStore::open(&uploads, UploadLimits::default()).unwrap();
            let registry = Registry::new(HttpClient::default(), origin_addr, index_addr);
            Proxy::new(Arc::new(store), registry)
        });
        let proxy_addr = proxy_server.addr;
        let agent = engine(&dir, "agent", tracker);
        let served = agent.clone();
        let agent_server = Served::start(move || async move {
            Agent::new(served)
                .with_registry(Registry::new(
                    HttpClient::default(),
                    origin_addr,
                    index_addr,
                ))
                .with_proxy(HttpClient::default(), proxy_addr)
        });
        Fixture {
            dir,
            origin,
            agent,
            index_addr,
            index_root,
            index: Some(index_server),
            servers: vec![origin_server, proxy_server, agent_server],
        }
    }

    /// Stops the build-index, lets `between` act on its stopped store, starts it again on
    /// the same address and store, and returns what its start-up recovery found.
    pub fn restart_build_index(&mut self, between: impl FnOnce(&Path)) -> RecoveryReport {
        drop(self.index.take());
        between(&self.index_root);
        let (server, report) = start_build_index(&self.index_root, Some(self.index_addr));
        self.index = Some(server);
        report
    }

    pub fn url(&self, path: &str) -> String {
        self.servers[2].url(path)
    }

    pub fn index_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.index_addr)
    }

    pub fn proxy_url(&self, path: &str) -> String {
        self.servers[1].url(path)
    }

    pub fn file(&self, bytes: &[u8]) -> String {
        let path = self
            .dir
            .join(format!("body-{}", Digest::sha256_of(bytes).encoded()));
        std::fs::write(&path, bytes).unwrap();
        format!("@{}", path.display())
    }

    /// A monolithic upload: `POST …/uploads/?digest=` with the bytes.
    pub fn push_blob(&self, name: &str, query: &str, blob: &[u8]) -> Digest {
        let digest = Digest::sha256_of(blob);
        let url = self.url(&format!("/v2/{name}/blobs/uploads/?{query}digest={digest}"));
        let reply = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &self.file(blob),
            &url,
        ]);
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.header("location"),
            Some(format!("/v2/{}blobs/{digest}", repo_prefix(name, query)).as_str())
        );
        digest
    }

    /// A session: `POST` for a `Location`, then `PUT <location>?digest=` with the bytes.
    pub fn push_blob_in_session(&self, name: &str, blob: &[u8]) -> Digest {
        let digest = Digest::sha256_of(blob);
        let reply = curl(&[
            "-X",
            "POST",
            &self.url(&format!("/v2/{name}/blobs/uploads/")),
        ]);
        assert_eq!(reply.status, 202);
        let location = reply.header("location").unwrap().to_owned();
        assert!(location.starts_with('/'), "{location}");
        let separator = if location.contains('?') { '&' } else { '?' };
        let reply = curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &self.file(blob),
            &self.url(&format!("{location}{separator}digest={digest}")),
        ]);
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        digest
    }

    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Reply {
        curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &self.file(body),
            &self.url(&format!("/v2/{name}/manifests/{reference}")),
        ])
    }

    /// Pushes a config and a layer (seeded by `seed`) and returns the manifest's bytes,
    /// not yet pushed.
    pub fn image(&self, name: &str, query: &str, seed: u8) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}");
        let layer = bytes((2 << 20) + 777 * usize::from(seed), seed);
        let config_digest = self.push_blob(name, query, config.as_bytes());
        let layer_digest = if query.is_empty() {
            self.push_blob_in_session(name, &layer)
        } else {
            self.push_blob(name, query, &layer)
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": CONFIG_TYPE, "digest": config_digest.to_string(),
                        "size": config.len() },
            "layers": [ { "mediaType": LAYER_TYPE, "digest": layer_digest.to_string(),
                          "size": layer.len() } ],
        });
        (
            serde_json::to_vec(&manifest).unwrap(),
            config.into_bytes(),
            layer,
        )
    }
}

/// The repository a request is served for: `ns/name/` with `?ns=`, else `name/`.
pub fn repo_prefix(name: &str, query: &str) -> String {
    match query.strip_prefix("ns=") {
        Some(rest) => format!("{}/{name}/", rest.trim_end_matches('&')),
        None => format!("{name}/"),
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.servers.clear();
        drop(self.index.take());
        self.agent.shutdown();
        self.origin.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn assert_manifest(reply: &Reply, media_type: &str, bytes: &[u8]) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some(media_type));
    let digest = Digest::sha256_of(bytes).to_string();
    assert_eq!(reply.header("docker-content-digest"), Some(digest.as_str()));
    let len = bytes.len().to_string();
    assert_eq!(reply.header("content-length"), Some(len.as_str()));
    assert!(reply.body == bytes, "the manifest differs");
}

/// A build-index over `root`, on `addr` (or any loopback port), and its recovery report.
fn start_build_index(root: &Path, addr: Option<SocketAddr>) -> (Served, RecoveryReport) {
    let (report_sender, report) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    let make = move || async move {
        let (index, report) = BuildIndex::open(&root).unwrap();
        report_sender.send(report).unwrap();
        index
    };
    let served = match addr {
        Some(addr) => Served::start_at(addr, make),
        None => Served::start(make),
    };
    (served, report.recv().unwrap())
}
