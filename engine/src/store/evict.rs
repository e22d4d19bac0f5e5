//! Eviction of complete blobs: the policy ([`select`], pure), the choice over a store
//! ([`plan`]) and its application ([`apply`]).

use std::collections::HashSet;
use std::io;
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

/// What a pass chose, before anything is removed ([`plan`], then [`apply`]).
#[derive(Debug, Clone, Default)]
pub struct EvictionPlan {
    /// The blobs to remove, and why.
    pub chosen: Vec<(Digest, EvictReason)>,
    /// Pinned blobs that the age or idle rule would have evicted.
    pub n_pinned_skipped: usize,
    /// The disk usage the watermark rule worked from, if any.
    pub usage: Option<DiskUsage>,
}

/// Chooses what to evict. A blob in `releasable` counts as unpinned: its pins belong to a
/// caller that lets go of the blob before [`apply`] (the engine stops seeding it).
pub(crate) fn plan(
    store: &StoreInner,
    now: SystemTime,
    usage: Option<DiskUsage>,
    releasable: &HashSet<Digest>,
) -> EvictionPlan {
    let state = lock(&store.state);
    let candidates: Vec<Candidate> = state
        .blobs
        .iter()
        .filter(|(_, entry)| !entry.evicting)
        .map(|(digest, entry)| Candidate {
            digest: *digest,
            allocated_bytes: entry.allocated_bytes,
            completed_at: entry.completed_at,
            last_access: entry.last_access,
            pinned: state.pins.contains_key(digest) && !releasable.contains(digest),
        })
        .collect();
    let (chosen, n_pinned_skipped) = select(&candidates, now, &store.config, usage);
    EvictionPlan {
        chosen: chosen
            .into_iter()
            .map(|(index, reason)| (candidates[index].digest, reason))
            .collect(),
        n_pinned_skipped,
        usage,
    }
}

/// Removes what `plan` chose. A chosen blob that is pinned (or being removed) by now is left
/// and counted in `n_pinned_skipped`: marking it under the lock means no pin can appear on a
/// blob once its removal has begun (`open_blob` refuses a blob marked `evicting`).
pub(crate) async fn apply(store: &StoreInner, plan: EvictionPlan) -> EvictionReport {
    let mut report = EvictionReport {
        n_pinned_skipped: plan.n_pinned_skipped,
        usage_before: plan.usage,
        ..EvictionReport::default()
    };
    for (digest, reason) in plan.chosen {
        let Some((len, allocated_bytes)) = mark(store, &digest) else {
            report.n_pinned_skipped += 1;
            continue;
        };
        match unmark_after(store, &digest, remove_blob_files(store, &digest).await) {
            Ok(()) => {
                tracing::info!(%digest, len, ?reason, "evicted");
                report.freed_bytes += allocated_bytes;
                report.evicted.push(EvictedBlob {
                    digest,
                    len,
                    reason,
                });
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "could not evict");
                report.failures.push((digest, error.to_string()));
            }
        }
    }
    report
}

/// Marks an unpinned complete blob `evicting` and returns its length and allocated bytes;
/// `None` if it is pinned, already being removed, or gone.
fn mark(store: &StoreInner, digest: &Digest) -> Option<(u64, u64)> {
    let mut state = lock(&store.state);
    let pinned = state.pins.contains_key(digest);
    let entry = state.blobs.get_mut(digest)?;
    if entry.evicting || pinned {
        return None;
    }
    entry.evicting = true;
    Some((entry.len, entry.allocated_bytes))
}

/// After the files of a marked blob were removed (or not): forgets it, or unmarks it.
fn unmark_after(store: &StoreInner, digest: &Digest, removed: io::Result<()>) -> io::Result<()> {
    let mut state = lock(&store.state);
    match removed {
        Ok(()) => {
            state.blobs.remove(digest);
            Ok(())
        }
        Err(error) => {
            if let Some(entry) = state.blobs.get_mut(digest) {
                entry.evicting = false;
            }
            Err(error)
        }
    }
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
    if mark(store, digest).is_none() {
        let state = lock(&store.state);
        if !state.blobs.contains_key(digest) {
            return Ok(false);
        }
        let pinned = state.pins.contains_key(digest);
        return Err(super::StoreError::Busy {
            digest: Box::new(*digest),
            what: if pinned { "in use" } else { "being evicted" },
        });
    }
    let removed = unmark_after(store, digest, remove_blob_files(store, digest).await);
    removed
        .map_err(|error| super::StoreError::io("remove", store.layout.blob_path(digest), error))?;
    tracing::info!(%digest, "removed");
    Ok(true)
}
