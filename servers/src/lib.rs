//! `shoal-servers`: the thin HTTP shims (agent, origin, tracker, build-index, proxy) over the
//! engine, and the storage backends. The only crate that speaks HTTP.
//!
//! Layout:
//! - [`http`]: HTTP/1.1 on compio (hyper through `cyper_core`): the accept loop, the
//!   response body (blobs streamed from the engine), the OCI error model, the distribution
//!   API's paths and `Range` header.
//! - [`agent`]: the agent's pull API over one engine (blobs through the swarm, manifests and
//!   tags through [`registry::Registry`], pushes forwarded to the proxy, containerd mirror `ns`).
//! - [`manifests`]: manifest reads (scoped to their repository), tag lists, the catalog and
//!   OCI 1.1 referrers, shared by the proxy and agent.
//! - [`cluster`]: the origins as a rendezvous-hash ring (owners per digest, read order,
//!   health checks, DNS refresh), shared by every client of the origins.
//! - [`origin`]: the origin's internal blob API (`/internal/blobs/<digest>`: PUT, HEAD,
//!   GET; `/internal/metainfo/<digest>`: GET) over one origin engine, which stores and seeds
//!   what is pushed.
//! - [`tracker`]: the tracker server, speaking the tracker protocol of
//!   `shoal_proto::tracker_wire` over TCP, sharded by info hash and digest over one compio
//!   runtime per shard; metainfo it lacks is fetched from the origins and cached.
//! - [`build_index`]: the build-index's tag store (persistent, versioned tag → digest map
//!   on local disk, plus each repository's manifests and referrers), manifest reference
//!   parsing, and its internal HTTP API
//!   (`build_index::server::BuildIndex`).
//! - [`config`]: the components' TOML config files (shared `[engine]` and `[http]`
//!   sections, human units, unknown keys refused by name).
//! - [`proxy`]: the push API (uploads, mounts, manifests, tags, catalog) over the upload
//!   store and [`registry::Registry`], the client of the origin's and build-index's internal
//!   HTTP APIs (shared with the agent).
//! - [`backend`]: storage backends behind one trait (local directory, S3/GCS/Azure through
//!   `object_store`, an upstream registry, plain HTTP), their tokio runtime, the write-back
//!   queue and deduplicated fetches.
//! - [`uploads`]: blob upload sessions for the push API (chunked and monolithic uploads,
//!   every digest verified), on local disk; blocking, called off the data plane.

pub use shoal_engine as engine;

pub mod agent;
pub mod backend;
pub mod build_index;
pub mod cluster;
pub mod config;
pub mod http;
pub mod manifests;
pub mod origin;
pub mod proxy;
pub mod registry;
pub mod tracker;
pub mod uploads;
