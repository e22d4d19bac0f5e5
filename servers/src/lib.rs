//! `shoal-servers`: the thin HTTP shims (agent, origin, tracker, build-index, proxy) over the
//! engine, and the storage backends. The only crate that speaks HTTP.
//!
//! Layout:
//! - [`http`]: HTTP/1.1 on compio (hyper through `cyper_core`): the accept loop, the
//!   response body (blobs streamed from the engine), the OCI error model, the distribution
//!   API's paths and `Range` header.
//! - [`agent`]: the agent's pull API over one engine (blobs through the swarm, manifests and
//!   tags through [`registry::Registry`], pushes forwarded to the proxy, containerd mirror `ns`).
//! - [`manifests`]: manifest reads, tag lists and the catalog, shared by the proxy and agent.
//! - [`origin`]: the origin's internal blob API (`/internal/blobs/<digest>`: PUT, HEAD,
//!   GET) over one origin engine, which stores and seeds what is pushed.
//! - [`tracker`]: a minimal tracker server (one compio runtime, one thread) speaking the
//!   tracker protocol of `shoal_proto::tracker_wire` over TCP. The sharded tracker comes
//!   later.
//! - [`build_index`]: the build-index's tag store (persistent, versioned tag → digest map
//!   on local disk), manifest reference parsing, and its internal HTTP API
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
pub mod config;
pub mod http;
pub mod manifests;
pub mod origin;
pub mod proxy;
pub mod registry;
pub mod tracker;
pub mod uploads;
