//! Eviction of complete blobs: the policy ([`select`], pure) and its application ([`run`]).

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_proto::Digest;

use super::{DiskUsage, StoreConfig, StoreInner, lock};

/// Why a blob was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvictReason {
    /// Completed longer ago than `evict_age_max`.
    Age,
    /// Not opened for longer than `evict_idle_after`.
    Idle,
    /// Least recently used while the disk was above the high watermark.
    DiskWatermark,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedBlob {
    pub digest: Digest,
    pub len: u64,
    pub reason: EvictReason,
}

/// What one eviction pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvictionReport {
    pub evicted: Vec<EvictedBlob>,
    /// Disk space the removals freed (allocated blocks).
    pub freed_bytes: u64,
    /// Pinned blobs (open, or with live download handles) that the age or idle rule would
    /// have evicted.
    pub n_pinned_skipped: usize,
    /// The disk usage the watermark rule worked from, if any.
    pub usage_before: Option<DiskUsage>,
    /// Blobs chosen but not removed (the OS refused), with the error. They stay in the store.
    pub failures: Vec<(Digest, String)>,
}

/// A blob as the policy sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) digest: Digest,
    pub(crate) allocated_bytes: u64,
    pub(crate) completed_at: SystemTime,
    pub(crate) last_access: SystemTime,
    pub(crate) pinned: bool,
}

/// The policy: which candidates to evict, and why; plus how many pinned ones the age and idle
/// rules skipped. Candidates are taken by index. Deterministic: ties in access time are
/// broken by digest.
pub(crate) fn select(
    candidates: &[Candidate],
    now: SystemTime,
    config: &StoreConfig,
    usage: Option<DiskUsage>,
) -> (Vec<(usize, EvictReason)>, usize) {
    let since = |then: SystemTime| now.duration_since(then).unwrap_or(Duration::ZERO);
    let mut chosen = Vec::new();
    let mut n_pinned_skipped = 0;
    let mut freed_bytes = 0u64;
    for (index, candidate) in candidates.iter().enumerate() {
        let reason = if config
            .evict_age_max
            .is_some_and(|age_max| since(candidate.completed_at) > age_max)
        {
            Some(EvictReason::Age)
        } else if config
            .evict_idle_after
            .is_some_and(|idle_after| since(candidate.last_access) > idle_after)
        {
            Some(EvictReason::Idle)
        } else {
            None
        };
        match reason {
            Some(_) if candidate.pinned => n_pinned_skipped += 1,
            Some(reason) => {
                chosen.push((index, reason));
                freed_bytes = freed_bytes.saturating_add(candidate.allocated_bytes);
            }
            None => {}
        }
    }

    let Some(usage) = usage else {
        return (chosen, n_pinned_skipped);
    };
    let total = usage.total_bytes as f64;
    let high_bytes = total * config.disk_high_watermark_fraction;
    let low_bytes = total * config.disk_low_watermark_fraction;
    let mut used_bytes = usage.used_bytes.saturating_sub(freed_bytes);
    if used_bytes as f64 <= high_bytes {
        return (chosen, n_pinned_skipped);
    }
    let mut by_recency: Vec<usize> = (0..candidates.len())
        .filter(|&index| {
            !candidates[index].pinned && !chosen.iter().any(|&(taken, _)| taken == index)
        })
        .collect();
    by_recency.sort_by_key(|&index| (candidates[index].last_access, candidates[index].digest));
    for index in by_recency {
        if used_bytes as f64 <= low_bytes {
            break;
        }
        chosen.push((index, EvictReason::DiskWatermark));
        used_bytes = used_bytes.saturating_sub(candidates[index].allocated_bytes);
    }
    (chosen, n_pinned_skipped)
}

/// One eviction pass over the store.
pub(crate) async fn run(
    store: &Arc<StoreInner>,
    now: SystemTime,
    usage: Option<DiskUsage>,
) -> EvictionReport {
    // Choose and mark under the lock, so that no pin can appear on a chosen blob: open_blob
    // refuses a blob marked `evicting`.
    let (victims, n_pinned_skipped) = {
        let mut state = lock(&store.state);
        let candidates: Vec<Candidate> = state
            .blobs
            .iter()
            .filter(|(_, entry)| !entry.evicting)
            .map(|(digest, entry)| Candidate {
                digest: *digest,
                allocated_bytes: entry.allocated_bytes,
                completed_at: entry.completed_at,
                last_access: entry.last_access,
                pinned: state.pins.contains_key(digest),
            })
            .collect();
        let (chosen, n_pinned_skipped) = select(&candidates, now, &store.config, usage);
        let mut victims = Vec::with_capacity(chosen.len());
        for (index, reason) in chosen {
            let candidate = &candidates[index];
            if let Some(entry) = state.blobs.get_mut(&candidate.digest) {
                entry.evicting = true;
                victims.push((candidate.digest, entry.len, entry.allocated_bytes, reason));
            }
        }
        (victims, n_pinned_skipped)
    };

    let mut report = EvictionReport {
        n_pinned_skipped,
        usage_before: usage,
        ..EvictionReport::default()
    };
    for (digest, len, allocated_bytes, reason) in victims {
        let removed = remove_blob_files(store, &digest).await;
        let mut state = lock(&store.state);
        match removed {
            Ok(()) => {
                state.blobs.remove(&digest);
                tracing::info!(%digest, len, ?reason, "evicted");
                report.freed_bytes += allocated_bytes;
                report.evicted.push(EvictedBlob {
                    digest,
                    len,
                    reason,
                });
            }
            Err(error) => {
                if let Some(entry) = state.blobs.get_mut(&digest) {
                    entry.evicting = false;
                }
                tracing::warn!(%digest, %error, "could not evict");
                report.failures.push((digest, error.to_string()));
            }
        }
    }
    report
}

/// Removes the blob, then its sidecar (a crash in between leaves a sidecar alone, which
/// recovery removes). Already absent is fine.
async fn remove_blob_files(store: &StoreInner, digest: &Digest) -> io::Result<()> {
    for path in [
        store.layout.blob_path(digest),
        store.layout.blob_metainfo_path(digest),
    ] {
        match compio::fs::remove_file(&path).await {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Removes one complete blob on request (not by policy). `Ok(false)` if it is not in the
/// store; `Busy` while it is pinned (open, or held by a download handle).
pub(crate) async fn remove_one(
    store: &StoreInner,
    digest: &Digest,
) -> Result<bool, super::StoreError> {
    {
        let mut state = lock(&store.state);
        let pinned = state.pins.contains_key(digest);
        let Some(entry) = state.blobs.get_mut(digest) else {
            return Ok(false);
        };
        if entry.evicting || pinned {
            return Err(super::StoreError::Busy {
                digest: Box::new(*digest),
                what: if pinned { "in use" } else { "being evicted" },
            });
        }
        entry.evicting = true;
    }
    let removed = remove_blob_files(store, digest).await;
    let mut state = lock(&store.state);
    match removed {
        Ok(()) => {
            state.blobs.remove(digest);
            tracing::info!(%digest, "removed");
            Ok(true)
        }
        Err(error) => {
            if let Some(entry) = state.blobs.get_mut(digest) {
                entry.evicting = false;
            }
            Err(super::StoreError::io(
                "remove",
                store.layout.blob_path(digest),
                error,
            ))
        }
    }
}
