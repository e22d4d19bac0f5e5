//! The build-index's storage and rules: tag → manifest digest, persistent and versioned.
//!
//! - [`TagStore`] (`store.rs`): the persistent map (repository, tag) → [`TagRecord`] on local
//!   disk, crash-safe (temporary file, fsync, rename, directory fsync; start-up recovery),
//!   versioned with optional compare-and-set, no read cache (a tag update is visible on the
//!   next read), paginated listings for `tags/list` and `_catalog`. Blocking std I/O: call
//!   it off the data plane. The same store records which manifests each repository holds
//!   and the referrers of each subject ([`TagStore::put_manifest`],
//!   [`TagStore::delete_manifest`], [`TagStore::referrers`], `store/members.rs`), as
//!   [`ManifestRecord`]s (`member.rs`), bounded by [`REFERRERS_PER_SUBJECT_MAX`] and
//!   [`ANNOTATIONS_BYTES_MAX`].
//! - [`referenced_digests`] (`manifest.rs`): what a manifest references, for the rule "a tag
//!   is accepted only once every blob its manifest references exists", and its `subject`,
//!   `artifactType` and annotations for the referrers API.
//! - [`validate_repository`], [`validate_tag`] (`names.rs`): the OCI name grammars, which
//!   also keep every path inside the store's root.
//!
//! - [`backing::Backing`] (`backing.rs`): the store over storage backends: tag writes
//!   written through ([`sync::TagSync`], `sync.rs`: a persistent journal of changed tags and
//!   the task that delivers their latest state), tags missing locally read back, listings
//!   merged with the backend's.
//! - [`server::BuildIndex`] (`server.rs`): the internal HTTP API over a `TagStore`
//!   (`/internal/tags/…`, `/internal/repositories`, `/internal/manifests/…`,
//!   `/internal/referrers/…`), the only HTTP in this module.
//!
//! Only `server.rs` speaks HTTP: it maps [`IndexError`], [`NameError`] and
//! [`ManifestError`] to OCI error codes at its edge.

pub mod backing;
mod manifest;
mod member;
mod names;
mod record;
pub mod server;
mod store;
pub mod sync;

pub use manifest::{
    DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, MANIFEST_LEN_MAX, ManifestError, ManifestKind,
    OCI_INDEX, OCI_MANIFEST, References, referenced_digests,
};
pub use member::{
    ANNOTATIONS_BYTES_MAX, MANIFEST_RECORD_LEN_MAX, ManifestRecord, REFERRERS_PER_SUBJECT_MAX,
    REFERRERS_RESPONSE_BYTES_MAX,
};
pub use names::{NameError, REPOSITORY_LEN_MAX, TAG_LEN_MAX, validate_repository, validate_tag};
pub use record::{MEDIA_TYPE_LEN_MAX, MediaTypeError, TagRecord, validate_media_type};
pub use store::{
    CorruptRecord, DeletedManifest, IndexError, PAGE_LEN_MAX, REPORT_LISTED_MAX, RecoveryReport,
    RepoPage, TagPage, TagStore,
};
