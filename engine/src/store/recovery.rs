//! Start-up recovery: decide, for everything under the root, whether it can be trusted. The
//! rules are on [`RecoveryReport`].

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncReadAtExt;
use shoal_proto::metainfo::ENCODED_LEN_MAX;
use shoal_proto::metainfo::Metainfo;
use shoal_proto::{Bitfield, Digest, InfoHash, PieceIndex};

use super::error::IoContext;
use super::layout::{self, BlobFileKind, Layout};
use super::{BlobEntry, StoreConfig, StoreError, download, sys};

/// The report lists at most this many discarded paths (all are logged and counted): a root
/// littered with garbage must not make the report unbounded.
pub const DISCARDED_LISTED_MAX: usize = 1024;

/// What [`super::Store::open`] found. Start-up recovery keeps only what it can vouch for:
///
/// - `blobs/<algorithm>/<xx>/`: a blob is kept only with its metainfo sidecar, whose digest
///   matches the name and whose `blob_len` is the file's size. A blob without a sidecar (its
///   size cannot be checked), a sidecar without a blob, a wrong size, a corrupt sidecar, a
///   temporary name or any other name is removed.
/// - `downloads/<algorithm>-<hex>/`: kept (resumable) only if `metainfo` decodes and names
///   that digest, `data` is exactly `blob_len` bytes, and `pieces` is exactly the bitfield's
///   length with its spare bits zero. Other files inside are removed; a directory failing any
///   rule is removed whole, as is one whose blob is already complete, a temporary directory,
///   and any other name.
/// - With [`StoreConfig::verify_on_start`], every piece a kept download marks stored is read
///   and hashed; the bits of those that fail are cleared on disk.
///
/// Everything removed is logged and counted, and the first [`DISCARDED_LISTED_MAX`] are
/// listed with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Complete blobs kept.
    pub n_blobs: usize,
    /// Their total length.
    pub blob_bytes: u64,
    /// Downloads that can be resumed with `begin_download`.
    pub resumable: Vec<ResumableDownload>,
    /// What was removed, and why: the first [`DISCARDED_LISTED_MAX`].
    pub discarded: Vec<Discarded>,
    /// How many paths were removed in all.
    pub n_discarded: usize,
    /// Bits cleared because the piece failed its hash (`verify_on_start`).
    pub n_pieces_failed_verification: u64,
}

/// A download kept at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableDownload {
    pub digest: Digest,
    pub info_hash: InfoHash,
    pub n_stored: u32,
    pub n_pieces: u32,
}

/// A path removed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    pub path: PathBuf,
    pub reason: DiscardReason,
}

/// Why recovery removed something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscardReason {
    #[error("temporary name left over from an interrupted write")]
    Temporary,
    #[error("name is not one the store uses")]
    UnknownName,
    #[error("wrong file type (a directory where a file belongs, or the reverse)")]
    WrongType,
    #[error("metainfo missing")]
    MetainfoMissing,
    #[error("metainfo corrupt: {0}")]
    MetainfoCorrupt(String),
    #[error("metainfo describes {0}, not the digest in the name")]
    MetainfoForOtherDigest(Box<Digest>),
    #[error("data missing")]
    DataMissing,
    #[error("data is {actual} bytes, the metainfo says {expected}")]
    WrongSize { expected: u64, actual: u64 },
    #[error("piece bitfield missing")]
    PiecesMissing,
    #[error("piece bitfield corrupt: {0}")]
    PiecesCorrupt(String),
    #[error("the blob is already complete")]
    AlreadyComplete,
    #[error("blob has no metainfo sidecar, so its size cannot be checked")]
    BlobWithoutMetainfo,
    #[error("metainfo sidecar has no blob")]
    MetainfoWithoutBlob,
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// A download directory that passed every check.
#[derive(Debug)]
pub(crate) struct LoadedDownload {
    pub(crate) metainfo: Metainfo,
    pub(crate) stored: Bitfield,
    /// Anything else in the directory, to remove.
    pub(crate) extra_entries: Vec<PathBuf>,
}

/// Reads a metainfo file, refusing one longer than any valid encoding before reading it.
pub(crate) fn read_metainfo_file(path: &Path) -> io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > ENCODED_LEN_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, longer than any metainfo ({ENCODED_LEN_MAX})"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(ENCODED_LEN_MAX + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Checks a download directory (blocking). `Ok(None)` if it does not exist.
pub(crate) fn load_download_dir(
    dir: &Path,
    digest: &Digest,
) -> Result<Option<LoadedDownload>, DiscardReason> {
    let unreadable = |error: io::Error| DiscardReason::Unreadable(error.to_string());
    match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error)),
        Ok(metadata) if !metadata.is_dir() => return Err(DiscardReason::WrongType),
        Ok(_) => {}
    }
    let mut extra_entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name();
        let known = [
            layout::DATA_FILE,
            layout::METAINFO_FILE,
            layout::PIECES_FILE,
        ]
        .iter()
        .any(|known| name == *known);
        if !known {
            extra_entries.push(entry.path());
        }
    }

    let metainfo_path = dir.join(layout::METAINFO_FILE);
    let bytes = match read_metainfo_file(&metainfo_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(DiscardReason::MetainfoMissing);
        }
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            return Err(DiscardReason::MetainfoCorrupt(error.to_string()));
        }
        Err(error) => return Err(unreadable(error)),
    };
    let metainfo = Metainfo::decode(&bytes)
        .map_err(|error| DiscardReason::MetainfoCorrupt(error.to_string()))?;
    if metainfo.digest() != *digest {
        return Err(DiscardReason::MetainfoForOtherDigest(Box::new(
            metainfo.digest(),
        )));
    }

    let data_path = dir.join(layout::DATA_FILE);
    match fs::symlink_metadata(&data_path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(DiscardReason::DataMissing);
        }
        Err(error) => return Err(unreadable(error)),
        Ok(metadata) if !metadata.is_file() => return Err(DiscardReason::WrongType),
        Ok(metadata) if metadata.len() != metainfo.blob_len() => {
            return Err(DiscardReason::WrongSize {
                expected: metainfo.blob_len(),
                actual: metadata.len(),
            });
        }
        Ok(_) => {}
    }

    let pieces_path = dir.join(layout::PIECES_FILE);
    let n_pieces = metainfo.n_pieces() as usize;
    let expected_len = Bitfield::byte_len(n_pieces) as u64;
    let pieces_bytes = match fs::symlink_metadata(&pieces_path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(DiscardReason::PiecesMissing);
        }
        Err(error) => return Err(unreadable(error)),
        Ok(metadata) if !metadata.is_file() => return Err(DiscardReason::WrongType),
        Ok(metadata) if metadata.len() != expected_len => {
            return Err(DiscardReason::PiecesCorrupt(format!(
                "{} bytes, expected {expected_len}",
                metadata.len()
            )));
        }
        // Bounded: at most PIECES_MAX / 8 bytes.
        Ok(_) => fs::read(&pieces_path).map_err(unreadable)?,
    };
    let stored = Bitfield::from_bytes(&pieces_bytes, n_pieces)
        .map_err(|error| DiscardReason::PiecesCorrupt(error.to_string()))?;
    Ok(Some(LoadedDownload {
        metainfo,
        stored,
        extra_entries,
    }))
}

/// Scans the root, removes what cannot be trusted, and returns the index of complete blobs.
pub(crate) async fn recover(
    layout: &Layout,
    config: &StoreConfig,
) -> Result<(HashMap<Digest, BlobEntry>, RecoveryReport), StoreError> {
    let mut report = RecoveryReport::default();
    let blobs = scan_blobs(layout, &mut report)?;
    report.n_blobs = blobs.len();
    report.blob_bytes = blobs.values().map(|entry| entry.len).sum();
    scan_downloads(layout, &blobs, config, &mut report).await?;
    tracing::info!(
        root = %layout.root().display(),
        n_blobs = report.n_blobs,
        blob_bytes = report.blob_bytes,
        n_resumable = report.resumable.len(),
        n_discarded = report.n_discarded,
        n_pieces_failed_verification = report.n_pieces_failed_verification,
        "store recovered"
    );
    Ok((blobs, report))
}

/// Removes `path` (file or tree) and records why.
fn discard(report: &mut RecoveryReport, path: PathBuf, reason: DiscardReason) {
    tracing::warn!(path = %path.display(), %reason, "discarding");
    if let Err(error) = sys::remove_all_blocking(&path) {
        tracing::error!(path = %path.display(), %error, "could not remove");
    }
    report.n_discarded += 1;
    if report.discarded.len() < DISCARDED_LISTED_MAX {
        report.discarded.push(Discarded { path, reason });
    }
}

/// The entries of a directory as (UTF-8 name or `None`, path, is a directory).
fn list_dir(dir: &Path) -> Result<Vec<(Option<String>, PathBuf, bool)>, StoreError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).context("read directory", dir)? {
        let entry = entry.context("read directory", dir)?;
        let is_dir = entry.file_type().context("stat", &entry.path())?.is_dir();
        let name = entry.file_name().into_string().ok();
        entries.push((name, entry.path(), is_dir));
    }
    // Sorted, so that reports (and logs) come out in a stable order.
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(entries)
}

fn unknown_name_reason(name: Option<&str>) -> DiscardReason {
    match name {
        Some(name) if layout::is_temp_name(name) => DiscardReason::Temporary,
        _ => DiscardReason::UnknownName,
    }
}

fn scan_blobs(
    layout: &Layout,
    report: &mut RecoveryReport,
) -> Result<HashMap<Digest, BlobEntry>, StoreError> {
    let mut blobs = HashMap::new();
    for (name, algorithm_dir, is_dir) in list_dir(&layout.blobs_dir())? {
        let algorithm = match name.as_deref() {
            Some(algorithm) if is_dir && layout::is_algorithm_dir_name(algorithm) => algorithm,
            other => {
                discard(report, algorithm_dir, unknown_name_reason(other));
                continue;
            }
        };
        for (name, prefix_dir, is_dir) in list_dir(&algorithm_dir)? {
            let prefix = match name.as_deref() {
                Some(prefix) if is_dir && layout::is_prefix_dir_name(prefix) => prefix,
                other => {
                    discard(report, prefix_dir, unknown_name_reason(other));
                    continue;
                }
            };
            scan_prefix_dir(algorithm, prefix, &prefix_dir, &mut blobs, report)?;
        }
    }
    Ok(blobs)
}

fn scan_prefix_dir(
    algorithm: &str,
    prefix: &str,
    dir: &Path,
    blobs: &mut HashMap<Digest, BlobEntry>,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    // Per digest: the blob file and the sidecar, as found.
    let mut found: HashMap<Digest, (Option<PathBuf>, Option<PathBuf>)> = HashMap::new();
    for (name, path, is_dir) in list_dir(dir)? {
        let parsed = name
            .as_deref()
            .and_then(|name| layout::parse_blob_file_name(algorithm, prefix, name));
        match parsed {
            None => discard(report, path, unknown_name_reason(name.as_deref())),
            Some(_) if is_dir => discard(report, path, DiscardReason::WrongType),
            Some((digest, BlobFileKind::Blob)) => found.entry(digest).or_default().0 = Some(path),
            Some((digest, BlobFileKind::Metainfo)) => {
                found.entry(digest).or_default().1 = Some(path)
            }
        }
    }
    let mut found: Vec<_> = found.into_iter().collect();
    found.sort_by_key(|(digest, _)| *digest);
    for (digest, files) in found {
        match files {
            (Some(blob), None) => discard(report, blob, DiscardReason::BlobWithoutMetainfo),
            (None, Some(sidecar)) => discard(report, sidecar, DiscardReason::MetainfoWithoutBlob),
            (Some(blob), Some(sidecar)) => match check_blob(&digest, &blob, &sidecar) {
                Ok(entry) => {
                    blobs.insert(digest, entry);
                }
                Err(reason) => {
                    discard(report, sidecar, reason.clone());
                    discard(report, blob, reason);
                }
            },
            (None, None) => unreachable!("an entry is made for a file found"),
        }
    }
    Ok(())
}

/// Checks a blob against its sidecar.
fn check_blob(digest: &Digest, blob: &Path, sidecar: &Path) -> Result<BlobEntry, DiscardReason> {
    let unreadable = |error: io::Error| DiscardReason::Unreadable(error.to_string());
    let bytes = read_metainfo_file(sidecar).map_err(|error| match error.kind() {
        io::ErrorKind::InvalidData => DiscardReason::MetainfoCorrupt(error.to_string()),
        _ => unreadable(error),
    })?;
    let metainfo = Metainfo::decode(&bytes)
        .map_err(|error| DiscardReason::MetainfoCorrupt(error.to_string()))?;
    if metainfo.digest() != *digest {
        return Err(DiscardReason::MetainfoForOtherDigest(Box::new(
            metainfo.digest(),
        )));
    }
    let blob_metadata = fs::metadata(blob).map_err(unreadable)?;
    if blob_metadata.len() != metainfo.blob_len() {
        return Err(DiscardReason::WrongSize {
            expected: metainfo.blob_len(),
            actual: blob_metadata.len(),
        });
    }
    let completed_at = fs::metadata(sidecar)
        .and_then(|metadata| metadata.modified())
        .unwrap_or_else(|_| SystemTime::now());
    Ok(BlobEntry {
        len: blob_metadata.len(),
        allocated_bytes: sys::allocated_bytes(&blob_metadata),
        completed_at,
        last_access: completed_at,
        evicting: false,
    })
}

async fn scan_downloads(
    layout: &Layout,
    blobs: &HashMap<Digest, BlobEntry>,
    config: &StoreConfig,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    for (name, dir, is_dir) in list_dir(&layout.downloads_dir())? {
        let digest = match name.as_deref().and_then(layout::parse_download_dir_name) {
            Some(digest) if is_dir => digest,
            Some(_) => {
                discard(report, dir, DiscardReason::WrongType);
                continue;
            }
            None => {
                discard(report, dir, unknown_name_reason(name.as_deref()));
                continue;
            }
        };
        if blobs.contains_key(&digest) {
            discard(report, dir, DiscardReason::AlreadyComplete);
            continue;
        }
        let mut found = match load_download_dir(&dir, &digest) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(reason) => {
                discard(report, dir, reason);
                continue;
            }
        };
        for extra in std::mem::take(&mut found.extra_entries) {
            let name = extra.file_name().and_then(|name| name.to_str());
            let reason = unknown_name_reason(name);
            discard(report, extra, reason);
        }
        if config.verify_on_start {
            let failed = verify_stored_pieces(&dir, &found.metainfo, &mut found.stored).await?;
            report.n_pieces_failed_verification += failed;
        }
        report.resumable.push(ResumableDownload {
            digest,
            info_hash: found.metainfo.info_hash(),
            // At most n_pieces, a u32.
            n_stored: found.stored.count_ones() as u32,
            n_pieces: found.metainfo.n_pieces(),
        });
    }
    Ok(())
}

/// Re-hashes every stored piece of a download, one piece-sized buffer at a time; clears (in
/// memory and on disk) the bits of pieces that fail or cannot be read. Returns how many.
async fn verify_stored_pieces(
    dir: &Path,
    metainfo: &Metainfo,
    stored: &mut Bitfield,
) -> Result<u64, StoreError> {
    let data_path = dir.join(layout::DATA_FILE);
    let data = compio::fs::File::open(&data_path)
        .await
        .context("open", &data_path)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(metainfo.piece_len() as usize);
    let mut failed: Vec<u32> = Vec::new();
    let present: Vec<u32> = stored.iter_ones().map(|index| index as u32).collect();
    for index in present {
        let piece = PieceIndex(index);
        let len = metainfo.piece_len_of(piece) as usize;
        let offset = metainfo.piece_offset(piece);
        buffer.clear();
        let BufResult(result, slice) = data.read_exact_at(buffer.slice(0..len), offset).await;
        buffer = slice.into_inner();
        let good = match result {
            Ok(()) => metainfo.verify_piece(piece, &buffer),
            Err(error) => {
                tracing::warn!(path = %data_path.display(), %piece, %error, "unreadable piece");
                false
            }
        };
        if !good {
            stored.clear(index as usize);
            failed.push(index);
        }
    }
    if !failed.is_empty() {
        tracing::warn!(
            digest = %metainfo.digest(),
            n_failed = failed.len(),
            "stored pieces failed verification; they will be fetched again"
        );
        let pieces_path = dir.join(layout::PIECES_FILE);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&pieces_path)
            .context("open", &pieces_path)?;
        download::write_bitfield_bytes(stored, &file, &failed).context("pwrite", &pieces_path)?;
        file.sync_data().context("fdatasync", &pieces_path)?;
    }
    Ok(failed.len() as u64)
}
