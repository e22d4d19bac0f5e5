//! The few calls compio does not offer (fallocate, statvfs, flock), through `rustix`'s safe
//! wrappers, and small compio helpers for directories.

use std::fs;
use std::io;
use std::path::Path;

use rustix::fs::{FallocateFlags, FlockOperation};

/// How full the filesystem under the store root is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes this process cannot use any more: `total - available`, so blocks reserved for
    /// the superuser count as used.
    pub used_bytes: u64,
}

impl DiskUsage {
    /// `used / total`; 1.0 for an empty (zero-sized) filesystem.
    pub fn used_fraction(&self) -> f64 {
        if self.total_bytes == 0 {
            return 1.0;
        }
        self.used_bytes as f64 / self.total_bytes as f64
    }
}

/// `statvfs` of the filesystem holding `path`.
pub(crate) fn disk_usage(path: &Path) -> io::Result<DiskUsage> {
    let stat = rustix::fs::statvfs(path)?;
    let total_bytes = stat.f_blocks.saturating_mul(stat.f_frsize);
    let available_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
    Ok(DiskUsage {
        total_bytes,
        used_bytes: total_bytes.saturating_sub(available_bytes),
    })
}

/// Bytes available to this process on the filesystem holding `path`, if statvfs works.
pub(crate) fn available_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What [`preallocate`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preallocated {
    /// Every block is reserved: later writes into the range cannot fail for lack of space
    /// (on non-copy-on-write filesystems).
    Reserved,
    /// The filesystem has no fallocate; the file was only extended (sparse).
    SparseFallback,
}

/// Reserves `len` bytes for `file` (blocking: run it off the shard, it may take a while on a
/// huge blob). ENOSPC comes back as an error of kind `StorageFull`.
pub(crate) fn preallocate(file: &fs::File, len: u64) -> io::Result<Preallocated> {
    if len == 0 {
        return Ok(Preallocated::Reserved);
    }
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(Preallocated::Reserved),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            file.set_len(len)?;
            Ok(Preallocated::SparseFallback)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Takes an exclusive, non-blocking `flock` on `file`; `WouldBlock` when another open file
/// description holds it. Released when the file is closed.
pub(crate) fn lock_exclusive(file: &fs::File) -> io::Result<()> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive)?;
    Ok(())
}

/// Bytes a file occupies on disk (`st_blocks * 512`), which is what deleting it frees.
pub(crate) fn allocated_bytes(metadata: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    metadata.blocks().saturating_mul(512)
}

/// fsyncs a directory, so that the names created, renamed or removed in it are durable.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let handle = compio::fs::File::open(dir).await?;
    handle.sync_all().await
}

/// Removes a file or a directory tree; absent is fine. Runs on the blocking pool (there is
/// no recursive removal op, and a tree may be large).
pub(crate) async fn remove_all(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    let result = compio::runtime::spawn_blocking(move || remove_all_blocking(&path)).await;
    result.unwrap_or_else(|_| Err(io::Error::other("removal task panicked")))
}

/// Blocking form of [`remove_all`], for start-up recovery.
pub(crate) fn remove_all_blocking(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
