//! `shoal-servers`: the thin HTTP shims (agent, origin, tracker, build-index, proxy) over the
//! engine, and the storage backends. The only crate that speaks HTTP.
//!
//! Built by the registry-front issue; today it only fixes the crate's place in the workspace.

pub use shoal_engine as engine;
