//! The store's files: the `meta` format, streaming a chunk to disk while hashing it, and the
//! small filesystem helpers (atomic replace, directory fsync, removal).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::Digest as _;
use shoal_proto::Digest;

use super::error::{IoContext as _, UploadError};
use super::names::validate_repository;

/// Name of a session's partial blob inside `sessions/<id>/`.
pub(crate) const DATA_FILE: &str = "data";
/// Name of a session's metadata inside `sessions/<id>/`.
pub(crate) const META_FILE: &str = "meta";
/// Every file or directory written and then renamed into place first has a name starting with
/// this; start-up recovery removes whatever still has it.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Bytes read from a body (and written to disk) per step: the only buffer an upload holds.
pub const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// A `meta` file longer than this is corrupt (a valid one is under 400 bytes).
const META_LEN_MAX: u64 = 1024;
const META_MAGIC: &str = "shoal-upload-meta v1";

/// What a session's `meta` holds. The offset is not in it: it is the length of `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) repo: String,
    pub(crate) created_ms: u64,
    pub(crate) last_activity_ms: u64,
}

impl Meta {
    /// Text form: a magic line, then one `key value` line per field, in this order.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{META_MAGIC}\nrepo {}\ncreated_unix_ms {}\nlast_activity_unix_ms {}\n",
            self.repo, self.created_ms, self.last_activity_ms
        )
    }

    /// Parses exactly what [`Meta::encode`] writes; the repository name is validated again.
    pub(crate) fn decode(text: &str) -> Result<Meta, String> {
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(META_MAGIC) {
            return Err(format!("first line is not {META_MAGIC:?}"));
        }
        let mut field = |key: &str| -> Result<&str, String> {
            lines
                .next()
                .and_then(|line| line.strip_prefix(key))
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| format!("line {key:?} missing"))
        };
        let repo = field("repo")?.to_owned();
        let number = |text: &str, key: &str| {
            text.parse::<u64>()
                .map_err(|error| format!("{key}: {error}"))
        };
        let created_ms = number(field("created_unix_ms")?, "created_unix_ms")?;
        let last_activity_ms = number(field("last_activity_unix_ms")?, "last_activity_unix_ms")?;
        if lines.next().is_some() {
            return Err("unexpected lines after the last field".to_owned());
        }
        validate_repository(&repo).map_err(|error| error.to_string())?;
        Ok(Meta {
            repo,
            created_ms,
            last_activity_ms,
        })
    }
}

/// Reads and parses a `meta` file. `Err` carries the reason (for the recovery report).
pub(crate) fn read_meta(path: &Path) -> io::Result<Result<Meta, String>> {
    let file = fs::File::open(path)?;
    let mut text = String::new();
    match file.take(META_LEN_MAX + 1).read_to_string(&mut text) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            return Ok(Err("not UTF-8".to_owned()));
        }
        Err(error) => return Err(error),
    }
    if text.len() as u64 > META_LEN_MAX {
        return Ok(Err(format!("longer than {META_LEN_MAX} bytes")));
    }
    Ok(Meta::decode(&text))
}

/// Writes `meta` into `dir` atomically: a temporary file, fsync, rename over `meta`. The
/// directory is not fsynced: the old and the new `meta` are both valid, and the caller fsyncs
/// the directory where the name must be durable (creation).
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> Result<(), UploadError> {
    let temp = dir.join(format!("{TEMP_PREFIX}{META_FILE}"));
    let path = dir.join(META_FILE);
    let result = fs::write(&temp, meta.encode())
        .context("write", &temp)
        .and_then(|()| {
            fs::File::open(&temp)
                .and_then(|file| file.sync_all())
                .context("fsync", &temp)
        })
        .and_then(|()| fs::rename(&temp, &path).context("rename", &temp));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The hash an upload is checked with, fed as the bytes arrive.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Hasher::Sha256",
            Hasher::Sha512(_) => "Hasher::Sha512",
        })
    }
}

impl Hasher {
    /// A fresh hasher of `digest`'s algorithm.
    pub(crate) fn like(digest: &Digest) -> Hasher {
        match digest {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Sha512(hasher) => hasher.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(hasher) => Digest::Sha256(hasher.finalize().into()),
            Hasher::Sha512(hasher) => Digest::Sha512(hasher.finalize().into()),
        }
    }
}

/// Feeds the first `len` bytes of the file at `path` to `hasher` (rebuilding a session's
/// hash after a restart, or hashing it with SHA-512 at completion). A file shorter than `len`
/// is an error: the session's file changed under it.
pub(crate) fn hash_file_prefix(
    path: &Path,
    len: u64,
    hasher: &mut Hasher,
) -> Result<(), UploadError> {
    let file = fs::File::open(path).context("open", path)?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).map_or(buffer.len(), |left| left.min(buffer.len()));
        let n = match file.read_at(&mut buffer[..want], done) {
            Ok(0) => {
                return Err(UploadError::io(
                    "read",
                    path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends at byte {done}, the upload has {len}"),
                    ),
                ));
            }
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(UploadError::io("read", path, error)),
        };
        hasher.update(&buffer[..n]);
        done += n as u64;
    }
    Ok(())
}

/// The bounds one chunk is streamed under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkBounds {
    /// The length the client declared, if it did.
    pub(crate) declared: Option<u64>,
    pub(crate) chunk_bytes_max: u64,
    pub(crate) blob_bytes_max: u64,
}

/// Streams `body` into `file` (at `path`) from byte `offset` on, feeding `hasher`, in
/// [`COPY_BUFFER_BYTES`] steps. Returns the number of bytes written.
///
/// A declared length is checked against the bounds before anything is read. Reading stops
/// one byte past the most that can be accepted (the declared length, else the bounds), so a
/// body that runs on is refused without being read to its end. On error, bytes may have been
/// written past `offset` and `hasher` may have been fed: the caller cuts the file back and
/// drops the hasher.
pub(crate) fn copy_chunk(
    file: &fs::File,
    path: &Path,
    offset: u64,
    bounds: ChunkBounds,
    hasher: &mut Hasher,
    body: &mut impl Read,
) -> Result<u64, UploadError> {
    let blob_room = bounds.blob_bytes_max.saturating_sub(offset);
    let too_large = || {
        if blob_room <= bounds.chunk_bytes_max {
            UploadError::BlobTooLarge {
                offset,
                blob_bytes_max: bounds.blob_bytes_max,
            }
        } else {
            UploadError::ChunkTooLarge {
                chunk_bytes_max: bounds.chunk_bytes_max,
            }
        }
    };
    let accept_max = blob_room.min(bounds.chunk_bytes_max);
    let cap = match bounds.declared {
        Some(declared) if declared > accept_max => return Err(too_large()),
        Some(declared) => declared,
        None => accept_max,
    };

    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut received = 0u64;
    loop {
        // At most one byte past `cap`, so an overlong body is detected without reading on.
        let room = cap + 1 - received;
        let want = usize::try_from(room).map_or(buffer.len(), |room| room.min(buffer.len()));
        let n = match body.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(UploadError::BodyRead { received, source }),
        };
        if received + n as u64 > cap {
            return Err(match bounds.declared {
                Some(declared) => UploadError::LengthMismatch {
                    declared,
                    received: declared + 1,
                },
                None => too_large(),
            });
        }
        file.write_all_at(&buffer[..n], offset + received)
            .context("write", path)?;
        hasher.update(&buffer[..n]);
        received += n as u64;
    }
    if let Some(declared) = bounds.declared
        && received != declared
    {
        return Err(UploadError::LengthMismatch { declared, received });
    }
    Ok(received)
}

/// fsyncs a directory, so that the names created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), UploadError> {
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .context("fsync", dir)
}

/// Removes a file or a directory tree; absent is fine.
pub(crate) fn remove_all(path: &Path) -> io::Result<()> {
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

/// Milliseconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Whether a session last active at `last_activity_ms` has been idle for `idle_timeout` at
/// `now`.
pub(crate) fn is_idle(last_activity_ms: u64, idle_timeout: Duration, now: SystemTime) -> bool {
    let timeout_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
    unix_ms(now).saturating_sub(last_activity_ms) >= timeout_ms
}
