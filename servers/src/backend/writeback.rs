//! The write-back queue: puts to a backend that must happen even if the backend is down now
//! or the process restarts.
//!
//! [`WriteBack::enqueue`] journals an entry (key, local file, length) as one file in the
//! queue's directory (`<seq>.entry`, JSON: written to `.tmp-<seq>`, fsynced, renamed,
//! directory fsynced) and returns only then: an entry the caller was answered for survives
//! a crash. [`WriteBack::run`], a compio task, puts each entry's file to the backend its key
//! routes to, oldest due first, one at a time, and removes the entry only after the backend
//! confirmed the put. A failure the backend may get over ([`BackendError::is_retryable`])
//! retries with exponential back-off from [`WriteBackConfig::backoff_min`] doubling up to
//! [`WriteBackConfig::backoff_max`], for as long as it takes (nothing is dropped because a
//! backend was down for long); any other failure (the file is gone, the backend is
//! read-only) moves the entry aside to `<seq>.failed`, logged, kept for an operator.
//! [`WriteBack::open`] reads the journal back (removing `.tmp-*` leftovers; an entry it
//! cannot parse is renamed `<seq>.corrupt`), so a restart resumes where it stopped.
//! Bounded: at most [`WriteBackConfig::entries_max`] entries; past it `enqueue` is refused.
//!
//! The local file is not removed after a put: it belongs to the caller (the origin's store).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use serde::{Deserialize, Serialize};

use super::{BackendError, Backends, Key, PutSource};

/// The queue's bounds and back-off.
#[derive(Debug, Clone)]
pub struct WriteBackConfig {
    /// Entries journaled at once; `enqueue` past it is refused.
    pub entries_max: usize,
    /// First retry delay after a failed put.
    pub backoff_min: Duration,
    /// Longest retry delay (the back-off doubles up to it).
    pub backoff_max: Duration,
}

impl Default for WriteBackConfig {
    fn default() -> WriteBackConfig {
        WriteBackConfig {
            entries_max: 100_000,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// What `open` and `enqueue` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("write-back journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write-back queue is full ({max} entries); {key} was not queued")]
    Full { max: usize, key: String },
    #[error("write-back of {key}: the file path {path:?} is not UTF-8")]
    Path { key: String, path: PathBuf },
}

/// One journaled put.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    namespace: String,
    path: String,
    file: String,
    len: u64,
}

#[derive(Debug)]
struct Pending {
    key: Key,
    file: PathBuf,
    len: u64,
    failures: u32,
    due: Instant,
}

#[derive(Debug)]
struct State {
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
}

/// A persistent queue of puts; `Send + Sync`, share it in an `Arc`.
#[derive(Debug)]
pub struct WriteBack {
    dir: PathBuf,
    backends: Arc<Backends>,
    config: WriteBackConfig,
    state: Mutex<State>,
    /// Fired when an entry is queued (wakes `run`) and when one is done (wakes `wait_empty`).
    changed: Event,
}

fn journal_error(path: &Path) -> impl FnOnce(io::Error) -> WriteBackError + '_ {
    move |source| WriteBackError::Journal {
        path: path.to_path_buf(),
        source,
    }
}

impl WriteBack {
    /// Opens (creating) the journal in `dir` and reads back what it holds. Blocking file
    /// I/O: call at start-up.
    pub fn open(
        dir: &Path,
        backends: Arc<Backends>,
        config: WriteBackConfig,
    ) -> Result<WriteBack, WriteBackError> {
        std::fs::create_dir_all(dir).map_err(journal_error(dir))?;
        let mut pending = BTreeMap::new();
        let mut next_seq = 0u64;
        let now = Instant::now();
        for entry in std::fs::read_dir(dir).map_err(journal_error(dir))? {
            let entry = entry.map_err(journal_error(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some((seq, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            next_seq = next_seq.max(seq + 1);
            if ext != "entry" {
                continue; // `.failed`, `.corrupt`: kept for an operator
            }
            match read_record(&path) {
                Some((key, record)) => {
                    pending.insert(
                        seq,
                        Pending {
                            key,
                            file: PathBuf::from(record.file),
                            len: record.len,
                            failures: 0,
                            due: now,
                        },
                    );
                }
                None => {
                    tracing::error!(path = %path.display(), "unreadable write-back entry set aside");
                    let _ = std::fs::rename(&path, dir.join(format!("{seq}.corrupt")));
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(entries = pending.len(), dir = %dir.display(), "write-back queue resumed");
        }
        Ok(WriteBack {
            dir: dir.to_path_buf(),
            backends,
            config,
            state: Mutex::new(State { pending, next_seq }),
            changed: Event::new(),
        })
    }

    /// Entries not yet confirmed by their backend.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.pending.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a put of the first `len` bytes of `file` to `key`; returns once the entry is
    /// durable in the journal.
    pub async fn enqueue(&self, key: Key, file: PathBuf, len: u64) -> Result<(), WriteBackError> {
        let Some(file_text) = file.to_str().map(str::to_owned) else {
            return Err(WriteBackError::Path {
                key: key.to_string(),
                path: file,
            });
        };
        let seq = {
            let mut state = self.state.lock().map_err(|_| poisoned(&self.dir))?;
            if state.pending.len() >= self.config.entries_max {
                return Err(WriteBackError::Full {
                    max: self.config.entries_max,
                    key: key.to_string(),
                });
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            seq
        };
        let record = Record {
            namespace: key.namespace().to_owned(),
            path: key.path().to_owned(),
            file: file_text,
            len,
        };
        let dir = self.dir.clone();
        let written = compio::runtime::spawn_blocking(move || write_record(&dir, seq, &record))
            .await
            .map_err(|_| WriteBackError::Journal {
                path: self.dir.clone(),
                source: io::Error::other("the journal task panicked"),
            })?;
        written.map_err(journal_error(&self.dir))?;
        {
            let mut state = self.state.lock().map_err(|_| poisoned(&self.dir))?;
            state.pending.insert(
                seq,
                Pending {
                    key,
                    file,
                    len,
                    failures: 0,
                    due: Instant::now(),
                },
            );
        }
        self.changed.notify(usize::MAX);
        Ok(())
    }

    /// Waits until the queue is empty or `wait_max` passed; whether it is empty.
    pub async fn wait_empty(&self, wait_max: Duration) -> bool {
        let deadline = Instant::now() + wait_max;
        loop {
            let listener = self.changed.listen();
            if self.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = compio::time::timeout(left, listener).await;
        }
    }

    /// The driver: delivers entries until the future is dropped. Run it as one compio task.
    pub async fn run(&self) {
        loop {
            let listener = self.changed.listen();
            let next = self.state.lock().ok().and_then(|state| {
                state
                    .pending
                    .iter()
                    .min_by_key(|(seq, p)| (p.due, **seq))
                    .map(|(seq, p)| (*seq, p.key.clone(), p.file.clone(), p.len, p.due))
            });
            let Some((seq, key, file, len, due)) = next else {
                listener.await;
                continue;
            };
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                // Woken early by a new entry, which may be due sooner.
                let _ = compio::time::timeout(wait, listener).await;
                continue;
            }
            drop(listener);
            let result = self.backends.put(&key, PutSource::File(file), len).await;
            self.settle(seq, &key, result).await;
        }
    }

    /// Records a put's outcome: done (entry removed), retry later, or set aside.
    async fn settle(&self, seq: u64, key: &Key, result: Result<(), BackendError>) {
        let entry = self.dir.join(format!("{seq}.entry"));
        match result {
            Ok(()) => {
                let dir = self.dir.clone();
                let removed = compio::runtime::spawn_blocking(move || {
                    std::fs::remove_file(&entry)?;
                    sync_dir(&dir)
                })
                .await;
                if !matches!(removed, Ok(Ok(()))) {
                    // The put happened; a leftover entry only repeats it after a restart.
                    tracing::warn!(%key, "write-back entry could not be removed");
                }
                if let Ok(mut state) = self.state.lock() {
                    state.pending.remove(&seq);
                }
                tracing::debug!(%key, "written back");
            }
            Err(error) if error.is_retryable() => {
                if let Ok(mut state) = self.state.lock()
                    && let Some(pending) = state.pending.get_mut(&seq)
                {
                    pending.failures = pending.failures.saturating_add(1);
                    let delay = backoff(&self.config, pending.failures);
                    pending.due = Instant::now() + delay;
                    tracing::warn!(%key, %error, failures = pending.failures, retry_in = ?delay, "write-back failed; will retry");
                }
            }
            Err(error) => {
                tracing::error!(%key, %error, "write-back failed for good; entry set aside as {seq}.failed");
                let failed = self.dir.join(format!("{seq}.failed"));
                let _ =
                    compio::runtime::spawn_blocking(move || std::fs::rename(entry, failed)).await;
                if let Ok(mut state) = self.state.lock() {
                    state.pending.remove(&seq);
                }
            }
        }
        self.changed.notify(usize::MAX);
    }
}

/// The delay after `failures` failed attempts: `backoff_min · 2^(failures-1)`, at most
/// `backoff_max`.
fn backoff(config: &WriteBackConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    config
        .backoff_min
        .saturating_mul(1 << doublings)
        .min(config.backoff_max)
}

fn poisoned(dir: &Path) -> WriteBackError {
    WriteBackError::Journal {
        path: dir.to_path_buf(),
        source: io::Error::other("the queue's state is poisoned"),
    }
}

fn read_record(path: &Path) -> Option<(Key, Record)> {
    let bytes = std::fs::read(path).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    let key = Key::new(&record.namespace, &record.path).ok()?;
    Some((key, record))
}

fn write_record(dir: &Path, seq: u64, record: &Record) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp-{seq}"));
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{seq}.entry")))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = WriteBackConfig {
            entries_max: 1,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| backoff(&config, n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&config, u32::MAX), Duration::from_secs(1));
    }
}
