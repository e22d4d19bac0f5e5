//! The local-filesystem backend: one directory, a key's path below it.
//!
//! A put writes `<root>/.tmp/<pid>-<n>` (a file source is copied, a stream written chunk by
//! chunk), fsyncs it, renames it over `<root>/<path>` and fsyncs the directory: a reader sees
//! the old object or the whole new one, never a part. A failed or cancelled put removes its
//! temporary file; a crash leaves it in `.tmp/`, which is emptied when the backend is opened.
//! Key paths cannot start a segment with `.` nor hold `..` ([`super::check_path`]), so no key
//! reaches `.tmp/` or leaves the root. Reads stream through compio files in
//! [`CHUNK_BYTES_MAX`] chunks; the rest (stat, rename, listing) runs on compio's blocking
//! pool.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use compio::io::{AsyncReadAt, AsyncWriteAtExt};

use super::{
    Backend, BackendError, BackendFuture, ByteStream, CHUNK_BYTES_MAX, Entry, ErrorKind, Key, Page,
    PageRequest, PutSource, check_prefix, resolve_range,
};

/// Temporary files of puts in progress, below the root.
const TMP_DIR: &str = ".tmp";

/// Directories a listing visits at most per page before it gives up on filling the page
/// (bounds the work of one call on a sparse tree).
const LIST_DIRS_VISITED_MAX: usize = 100_000;

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    describe: String,
    next_tmp: AtomicU64,
}

impl LocalBackend {
    /// Opens (creating) `root` and empties its `.tmp/` (what a crash left mid-put).
    pub fn new(root: &Path) -> Result<LocalBackend, BackendError> {
        let describe = format!("local directory {}", root.display());
        let tmp = root.join(TMP_DIR);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| {
            BackendError::new(
                ErrorKind::Config,
                format!("{describe}: creating {}: {e}", tmp.display()),
            )
        })?;
        Ok(LocalBackend {
            root: root.to_path_buf(),
            describe,
            next_tmp: AtomicU64::new(0),
        })
    }

    fn object_path(&self, key: &Key) -> PathBuf {
        // Key paths are checked at construction: relative, no `..`, no `.`-segment.
        self.root.join(key.path())
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(TMP_DIR)
            .join(format!("{}-{n}", std::process::id()))
    }

    fn io_error(&self, op: &str, key: &Key, error: io::Error) -> BackendError {
        let kind = if error.kind() == io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Unavailable
        };
        BackendError::new(kind, format!("{}: {op} {key}: {error}", self.describe))
    }

    async fn put_file(&self, key: &Key, source: PathBuf, len: u64) -> Result<(), BackendError> {
        let tmp = TmpFile(self.tmp_path());
        let dest = self.object_path(key);
        let tmp_path = tmp.0.clone();
        let describe = self.describe.clone();
        let key_text = key.to_string();
        blocking(move || -> Result<(), BackendError> {
            let fail = |what: &str, e: io::Error| {
                BackendError::new(
                    if e.kind() == io::ErrorKind::NotFound {
                        ErrorKind::Invalid
                    } else {
                        ErrorKind::Unavailable
                    },
                    format!("{describe}: put {key_text}: {what}: {e}"),
                )
            };
            let mut input = std::fs::File::open(&source)
                .map_err(|e| fail(&format!("opening {}", source.display()), e))?;
            let have = input
                .metadata()
                .map_err(|e| fail("reading the source's length", e))?
                .len();
            if have < len {
                return Err(BackendError::invalid(format!(
                    "{describe}: put {key_text}: {} holds {have} bytes, fewer than {len}",
                    source.display()
                )));
            }
            let mut output = std::fs::File::create(&tmp_path)
                .map_err(|e| fail("creating a temporary file", e))?;
            let copied = io::copy(&mut io::Read::take(&mut input, len), &mut output)
                .map_err(|e| fail("copying", e))?;
            if copied != len {
                return Err(BackendError::invalid(format!(
                    "{describe}: put {key_text}: the source ended after {copied} of {len} bytes"
                )));
            }
            output.sync_all().map_err(|e| fail("fsync", e))?;
            commit(&tmp_path, &dest).map_err(|e| fail("rename", e))
        })
        .await??;
        tmp.committed();
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &Key,
        mut source: ByteStream,
        len: u64,
    ) -> Result<(), BackendError> {
        if source.len() != len {
            return Err(BackendError::invalid(format!(
                "{}: put {key}: the stream holds {} bytes, not {len}",
                self.describe,
                source.len()
            )));
        }
        let tmp = TmpFile(self.tmp_path());
        let mut file = compio::fs::File::create(&tmp.0)
            .await
            .map_err(|e| self.io_error("put (creating a temporary file)", key, e))?;
        let mut offset = 0u64;
        while let Some(chunk) = source.next_chunk().await {
            let chunk = chunk?;
            if offset + chunk.len() as u64 > len {
                return Err(BackendError::invalid(format!(
                    "{}: put {key}: the stream yields more than {len} bytes",
                    self.describe
                )));
            }
            let n = chunk.len() as u64;
            let compio::BufResult(written, _) = file.write_all_at(chunk, offset).await;
            written.map_err(|e| self.io_error("put (write)", key, e))?;
            offset += n;
        }
        if offset != len {
            return Err(BackendError::invalid(format!(
                "{}: put {key}: the stream ended after {offset} of {len} bytes",
                self.describe
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| self.io_error("put (fsync)", key, e))?;
        drop(file);
        let (tmp_path, dest) = (tmp.0.clone(), self.object_path(key));
        blocking(move || commit(&tmp_path, &dest))
            .await?
            .map_err(|e| self.io_error("put (rename)", key, e))?;
        tmp.committed();
        Ok(())
    }

    async fn get_stream(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BackendError> {
        let file = compio::fs::File::open(self.object_path(key))
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        if !meta.is_file() {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("{}: get {key}: not a file", self.describe),
            ));
        }
        let range = if meta.len() == 0 && range.is_none() {
            0..0
        } else {
            resolve_range(key, range, meta.len())?
        };
        let describe = format!("{}: get {key}", self.describe);
        let len = range.end - range.start;
        let state = (Some(file), range.start, range.end);
        let stream = futures_util::stream::unfold(state, move |(file, offset, end)| {
            let describe = describe.clone();
            async move {
                let file = file?;
                if offset >= end {
                    return None;
                }
                // At most CHUNK_BYTES_MAX: fits in usize.
                let want = (end - offset).min(CHUNK_BYTES_MAX as u64) as usize;
                let compio::BufResult(read, buf) =
                    file.read_at(Vec::with_capacity(want), offset).await;
                match read {
                    Ok(0) => Some((
                        Err(BackendError::unavailable(format!(
                            "{describe}: the file ended at {offset}, before {end}"
                        ))),
                        (None, offset, end),
                    )),
                    Ok(n) => {
                        let mut bytes = Bytes::from(buf);
                        bytes.truncate(n.min(want));
                        let next = offset + bytes.len() as u64;
                        Some((Ok(bytes), (Some(file), next, end)))
                    }
                    Err(e) => Some((
                        Err(BackendError::unavailable(format!("{describe}: {e}"))),
                        (None, offset, end),
                    )),
                }
            }
        });
        Ok(ByteStream::new(len, stream))
    }
}

/// A temporary file, removed on drop unless committed (renamed into place).
struct TmpFile(PathBuf);

impl TmpFile {
    fn committed(self) {
        std::mem::forget(self);
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Renames `tmp` over `dest` (creating its directories) and fsyncs `dest`'s directory.
fn commit(tmp: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::other("an object path has no parent"))?;
    std::fs::create_dir_all(parent)?;
    std::fs::rename(tmp, dest)?;
    std::fs::File::open(parent)?.sync_all()
}

/// Runs `f` on compio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    compio::runtime::spawn_blocking(f)
        .await
        .map_err(|_| BackendError::unavailable("a local backend task panicked"))
}

impl Backend for LocalBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        Box::pin(async move {
            let path = self.object_path(key);
            match blocking(move || std::fs::metadata(path)).await? {
                Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.io_error("stat", key, e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        Box::pin(self.get_stream(key, range))
    }

    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            match source {
                PutSource::File(path) => self.put_file(key, path, len).await,
                PutSource::Stream(stream) => self.put_stream(key, stream, len).await,
            }
        })
    }

    fn list<'a>(
        &'a self,
        _namespace: &'a str,
        prefix: &'a str,
        page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let root = self.root.clone();
            let prefix = prefix.to_owned();
            let after = page.after.map(str::to_owned);
            let limit = page.limit();
            let describe = self.describe.clone();
            blocking(move || list_sorted(&root, &prefix, after.as_deref(), limit))
                .await?
                .map_err(|e| BackendError::unavailable(format!("{describe}: list: {e}")))
        })
    }

    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let path = self.object_path(key);
            match blocking(move || std::fs::remove_file(path)).await? {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io_error("delete", key, e)),
            }
        })
    }

    fn check(&self) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let probe = self.tmp_path();
            let describe = self.describe.clone();
            blocking(move || {
                std::fs::write(&probe, b"probe")?;
                std::fs::remove_file(&probe)
            })
            .await?
            .map_err(|e| {
                BackendError::new(
                    ErrorKind::Config,
                    format!("{describe} is not writable: {e}"),
                )
            })
        })
    }
}

/// Lists the files under `root/prefix` in ascending path order (the order of the paths as
/// strings, as object stores list: a directory sorts as its name followed by `/`), skipping
/// everything up to and including `after`, at most `limit`.
fn list_sorted(root: &Path, prefix: &str, after: Option<&str>, limit: usize) -> io::Result<Page> {
    let mut entries = Vec::new();
    let mut visited = 0usize;
    let start = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    match std::fs::symlink_metadata(&start) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) | Err(_) => return Ok(Page::default()),
    }
    // One more than the limit tells whether another page follows.
    walk(&start, prefix, after, limit + 1, &mut entries, &mut visited)?;
    let next = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e: &Entry| e.path.clone())
    } else {
        None
    };
    Ok(Page { entries, next })
}

fn walk(
    dir: &Path,
    rel: &str,
    after: Option<&str>,
    want: usize,
    out: &mut Vec<Entry>,
    visited: &mut usize,
) -> io::Result<()> {
    *visited += 1;
    if *visited > LIST_DIRS_VISITED_MAX {
        return Err(io::Error::other(format!(
            "more than {LIST_DIRS_VISITED_MAX} directories to visit for one page"
        )));
    }
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue; // `.tmp/` and anything that is no key
        }
        let kind = entry.file_type()?;
        let sort_key = if kind.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        children.push((sort_key, name, kind.is_dir()));
    }
    children.sort();
    for (_, name, is_dir) in children {
        if out.len() >= want {
            return Ok(());
        }
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if is_dir {
            // Skip a subtree whose every path sorts at or before `after`.
            if let Some(after) = after {
                let dir_prefix = format!("{path}/");
                if dir_prefix.as_str() < after && !after.starts_with(&dir_prefix) {
                    continue;
                }
            }
            walk(&dir.join(&name), &path, after, want, out, visited)?;
        } else {
            if after.is_some_and(|after| path.as_str() <= after) {
                continue;
            }
            let len = std::fs::metadata(dir.join(&name)).ok().map(|m| m.len());
            out.push(Entry { path, len });
        }
    }
    Ok(())
}
