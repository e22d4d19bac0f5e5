//! Deduplicated fetches: many concurrent misses for one key make one backend read.
//!
//! [`Flights::run`] runs the first caller's operation for a key (the leader); callers that
//! come for the same key while it runs wait for its outcome instead of starting their own,
//! and all get a clone of it. A leader that is dropped mid-way (its request cancelled)
//! hands its waiters an error rather than leaving them waiting. `Send + Sync`: one
//! `Flights` serves every shard; waiting uses `event_listener`, which wakes any executor.
//! At most [`Flights::new`]'s bound of keys are in flight; past it a new key is refused
//! (the caller answers "busy") rather than queued without bound.
//!
//! [`fetch_to_file`] is what an origin does on a miss: one backend get of the whole object,
//! streamed to a temporary file beside `dest`, fsynced and renamed into place, so `dest`
//! holds the whole object or nothing.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use compio::io::AsyncWriteAtExt;
use event_listener::Event;

use super::{BackendError, Backends, ErrorKind, Key};

/// One operation in flight and its outcome once done.
#[derive(Debug)]
struct Flight<T> {
    outcome: OnceLock<Result<T, BackendError>>,
    done: Event,
}

/// The operations in flight, by key.
#[derive(Debug)]
pub struct Flights<T> {
    inflight: Mutex<HashMap<String, Arc<Flight<T>>>>,
    keys_max: usize,
}

/// Ends a flight when the leader finishes or is dropped: records the outcome (an error if
/// none was given), wakes the waiters, forgets the key.
struct Landing<'a, T: Clone> {
    flights: &'a Flights<T>,
    key: String,
    flight: Arc<Flight<T>>,
}

impl<T: Clone> Landing<'_, T> {
    fn land(&self, outcome: Result<T, BackendError>) {
        let _ = self.flight.outcome.set(outcome);
    }
}

impl<T: Clone> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let _ = self
            .flight
            .outcome
            .set(Err(BackendError::unavailable(format!(
                "the fetch of {} was cancelled",
                self.key
            ))));
        if let Ok(mut inflight) = self.flights.inflight.lock() {
            inflight.remove(&self.key);
        }
        self.flight.done.notify(usize::MAX);
    }
}

impl<T: Clone> Flights<T> {
    /// At most `keys_max` keys in flight at once (at least one).
    pub fn new(keys_max: usize) -> Flights<T> {
        Flights {
            inflight: Mutex::new(HashMap::new()),
            keys_max: keys_max.max(1),
        }
    }

    /// Keys in flight now.
    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `operation` for `key` unless a run for `key` is in flight, in which case waits
    /// for that one's outcome. Every caller gets the outcome.
    pub async fn run<F, Fut>(&self, key: &str, operation: F) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let (flight, leader) = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| BackendError::unavailable("the fetch table is poisoned"))?;
            match inflight.get(key) {
                Some(flight) => (Arc::clone(flight), false),
                None => {
                    if inflight.len() >= self.keys_max {
                        return Err(BackendError::unavailable(format!(
                            "{} fetches in flight already (the bound); {key} must wait",
                            self.keys_max
                        )));
                    }
                    let flight = Arc::new(Flight {
                        outcome: OnceLock::new(),
                        done: Event::new(),
                    });
                    inflight.insert(key.to_owned(), Arc::clone(&flight));
                    (flight, true)
                }
            }
        };
        if leader {
            let landing = Landing {
                flights: self,
                key: key.to_owned(),
                flight,
            };
            let outcome = operation().await;
            landing.land(outcome.clone());
            return outcome;
        }
        loop {
            let listener = flight.done.listen();
            if let Some(outcome) = flight.outcome.get() {
                return outcome.clone();
            }
            listener.await;
        }
    }
}

/// Gets the whole object at `key` into `dest` (a temporary file beside it, fsynced, then
/// renamed), sharing one backend get among concurrent callers for the same key. Returns the
/// object's length. `dest`'s directory must exist.
pub async fn fetch_to_file(
    flights: &Flights<u64>,
    backends: &Backends,
    key: &Key,
    dest: &Path,
) -> Result<u64, BackendError> {
    let flight_key = format!("{}\n{}", key.path(), dest.display());
    flights
        .run(&flight_key, || write_object(backends, key, dest))
        .await
}

async fn write_object(backends: &Backends, key: &Key, dest: &Path) -> Result<u64, BackendError> {
    let io = |what: &str, e: std::io::Error| {
        BackendError::new(
            ErrorKind::Unavailable,
            format!("fetching {key} into {}: {what}: {e}", dest.display()),
        )
    };
    let mut stream = backends.get(key, None).await?;
    let name = dest
        .file_name()
        .ok_or_else(|| BackendError::invalid(format!("{} has no file name", dest.display())))?;
    let tmp = Temp(dest.with_file_name(format!(
        ".fetch-{}-{}",
        name.to_string_lossy(),
        std::process::id()
    )));
    let mut file = compio::fs::File::create(&tmp.0)
        .await
        .map_err(|e| io("creating", e))?;
    let mut offset = 0u64;
    while let Some(chunk) = stream.next_chunk().await {
        let chunk = chunk?;
        let n = chunk.len() as u64;
        let compio::BufResult(written, _) = file.write_all_at(chunk, offset).await;
        written.map_err(|e| io("writing", e))?;
        offset += n;
    }
    if offset != stream.len() {
        return Err(BackendError::unavailable(format!(
            "fetching {key}: got {offset} of {} bytes",
            stream.len()
        )));
    }
    file.sync_all().await.map_err(|e| io("fsync", e))?;
    drop(file);
    let (from, to) = (tmp.0.clone(), dest.to_path_buf());
    compio::runtime::spawn_blocking(move || std::fs::rename(from, to))
        .await
        .map_err(|_| BackendError::unavailable("a rename task panicked"))?
        .map_err(|e| io("rename", e))?;
    std::mem::forget(tmp);
    Ok(offset)
}

/// A temporary file removed on drop (a failed or cancelled fetch).
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
