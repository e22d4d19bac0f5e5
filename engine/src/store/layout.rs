//! Where everything lives under the store root, and how names are parsed back. Pure path
//! arithmetic: no I/O here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_proto::Digest;

pub(crate) const BLOBS_DIR: &str = "blobs";
pub(crate) const DOWNLOADS_DIR: &str = "downloads";
pub(crate) const LOCK_FILE: &str = "lock";

/// Inside a download directory.
pub(crate) const DATA_FILE: &str = "data";
pub(crate) const METAINFO_FILE: &str = "metainfo";
pub(crate) const PIECES_FILE: &str = "pieces";

/// Suffix of a complete blob's metainfo, next to the blob: `<hex>.metainfo`.
pub(crate) const METAINFO_SUFFIX: &str = ".metainfo";

/// Prefix of every temporary name (files and directories). Such names are never valid
/// digests (a digest never starts with a dot), and start-up recovery removes them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// The store's paths, all derived from the root.
#[derive(Debug)]
pub(crate) struct Layout {
    root: PathBuf,
    /// Makes temporary names unique within the process; the root's lock file makes the
    /// process unique for the root.
    temp_counter: AtomicU64,
}

impl Layout {
    pub(crate) fn new(root: PathBuf) -> Layout {
        Layout {
            root,
            temp_counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR)
    }

    pub(crate) fn downloads_dir(&self) -> PathBuf {
        self.root.join(DOWNLOADS_DIR)
    }

    /// `blobs/<algorithm>`.
    pub(crate) fn blob_algorithm_dir(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(component(digest.algorithm()))
    }

    /// `blobs/<algorithm>/<first two hex>`.
    pub(crate) fn blob_dir(&self, digest: &Digest) -> PathBuf {
        let hex = digest.encoded();
        self.blob_algorithm_dir(digest).join(component(&hex[..2]))
    }

    /// `blobs/<algorithm>/<first two hex>/<hex>`: exactly the blob's bytes.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(component(&digest.encoded()))
    }

    /// `blobs/<algorithm>/<first two hex>/<hex>.metainfo`: the blob's canonical metainfo.
    pub(crate) fn blob_metainfo_path(&self, digest: &Digest) -> PathBuf {
        let name = format!("{}{METAINFO_SUFFIX}", digest.encoded());
        self.blob_dir(digest).join(component(&name))
    }

    /// `downloads/<algorithm>-<hex>`.
    pub(crate) fn download_dir(&self, digest: &Digest) -> PathBuf {
        self.downloads_dir()
            .join(component(&download_dir_name(digest)))
    }

    /// A fresh temporary path in `dir` whose name mentions `base`.
    pub(crate) fn temp_path(&self, dir: &Path, base: &str) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEMP_PREFIX}{base}-{}-{n}", std::process::id());
        dir.join(component(&name))
    }
}

/// `<algorithm>-<hex>`.
pub(crate) fn download_dir_name(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.encoded())
}

/// The digest a download directory is named after, if the name is exactly the canonical
/// `<algorithm>-<hex>` of a supported digest.
pub(crate) fn parse_download_dir_name(name: &str) -> Option<Digest> {
    let (algorithm, hex) = name.split_once('-')?;
    let digest = Digest::parse(&format!("{algorithm}:{hex}")).ok()?;
    (download_dir_name(&digest) == name).then_some(digest)
}

/// The digest a file in `blobs/<algorithm>/<prefix>/` is named after, and whether the name is
/// the metainfo sidecar (`<hex>.metainfo`) rather than the blob (`<hex>`). `None` for any
/// other name, including a hex in the wrong prefix directory.
pub(crate) fn parse_blob_file_name(
    algorithm: &str,
    prefix: &str,
    name: &str,
) -> Option<(Digest, BlobFileKind)> {
    let (hex, kind) = match name.strip_suffix(METAINFO_SUFFIX) {
        Some(hex) => (hex, BlobFileKind::Metainfo),
        None => (name, BlobFileKind::Blob),
    };
    if !hex.starts_with(prefix) || prefix.len() != 2 {
        return None;
    }
    let digest = Digest::parse(&format!("{algorithm}:{hex}")).ok()?;
    (digest.algorithm() == algorithm && digest.encoded() == hex).then_some((digest, kind))
}

/// The two kinds of file in a blob prefix directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobFileKind {
    Blob,
    Metainfo,
}

/// Whether `name` is one of the algorithm directories under `blobs/`.
pub(crate) fn is_algorithm_dir_name(name: &str) -> bool {
    matches!(name, "sha256" | "sha512")
}

/// Whether `name` is a blob prefix directory: two lowercase hex digits.
pub(crate) fn is_prefix_dir_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Asserts that `name` is one plain path component. Digests are validated hex, so this can
/// only fail through a bug; it is the last guard against a path escaping the root.
fn component(name: &str) -> &str {
    assert!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']),
        "{name:?} is not a plain path component"
    );
    name
}
