//! S3, GCS and Azure through `object_store`, on the shared backend runtime
//! ([`super::runtime`]).
//!
//! - get: one ranged GET (a ranged get asks `HEAD` first, so a range outside the object is
//!   [`ErrorKind::Invalid`] rather than whatever the service answers), streamed through a
//!   bounded channel.
//! - put: up to [`SINGLE_PUT_BYTES_MAX`] one PUT (the body gathered first: at most that much
//!   in memory); above it a multipart upload of [`PART_BYTES`] parts with at most
//!   [`PARTS_IN_FLIGHT`] uploading at once, aborted if the source fails or is short. Either
//!   way the object appears whole or not at all.
//! - list: the service's listing from `after`, `limit + 1` entries to know whether more
//!   follow. delete: idempotent.
//! - check: listing the prefix, which fails for a missing bucket or a wrong endpoint.
//!
//! Credentials: from the file, else from the environment as each SDK reads it (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`); they never appear in messages (`describe` names the bucket and
//! the endpoint only). GCS can be pointed at an emulator (`endpoint`, `allow_http`,
//! `skip_signature`); its client speaks GCS's XML API, which the PyPI emulators only
//! partly serve (`tests/tests/backends_gcs.rs` says which calls fail).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::{
    Backend, BackendError, BackendFuture, ByteStream, CHUNK_BYTES_MAX, Entry, ErrorKind, Key, Page,
    PageRequest, PutSource, check_prefix, resolve_range, runtime,
};
use crate::config::backends::{AzureConfig, GcsConfig, RemoteTuning, S3Config};

/// Largest put sent as one request; bigger ones are multipart uploads.
pub const SINGLE_PUT_BYTES_MAX: u64 = 8 << 20;

/// Part size of multipart uploads (S3's minimum is 5 MiB; 10,000 parts of 16 MiB cover
/// 156 GiB, more than the largest blob).
pub const PART_BYTES: usize = 16 << 20;

/// Parts uploading at once; with the part being filled, the memory of one put is at most
/// `(PARTS_IN_FLIGHT + 1) * PART_BYTES`.
pub const PARTS_IN_FLIGHT: usize = 2;

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

/// Only the description: the store's own `Debug` would show its credentials.
impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectBackend({})", self.describe)
    }
}

fn config_error(describe: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(ErrorKind::Config, format!("{describe}: {e}"))
}

fn client_options(t: &RemoteTuning, allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(t.connect_timeout)
        .with_read_timeout(t.read_timeout)
        .with_allow_http(allow_http)
}

/// An endpoint is an `http://` (only with `allow_http`) or `https://` URL with a host and
/// nothing that could carry a credential (user info, a query, a fragment); such an endpoint
/// is refused without being repeated.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), String> {
    let rest = if let Some(rest) = endpoint.strip_prefix("https://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        if !allow_http {
            return Err(format!(
                "endpoint {endpoint} is plain HTTP: set allow_http = true to use it"
            ));
        }
        rest
    } else {
        return Err(format!(
            "endpoint {endpoint:?} is not an http:// or https:// URL"
        ));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.contains('@') || rest.contains(['?', '#']) {
        return Err("the endpoint holds user info, a query or a fragment: \
                    expected scheme://host[:port][/path], without credentials"
            .to_owned());
    }
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }
    Ok(())
}

fn retry(t: &RemoteTuning) -> RetryConfig {
    RetryConfig {
        max_retries: t.retries_max,
        retry_timeout: t.retry_timeout,
        ..RetryConfig::default()
    }
}

impl ObjectBackend {
    pub fn s3(c: &S3Config) -> Result<ObjectBackend, BackendError> {
        let region = c.region.clone().unwrap_or_else(|| "us-east-1".to_owned());
        let describe = match &c.endpoint {
            Some(endpoint) => format!("s3 bucket {:?} at {endpoint}", c.bucket),
            None => format!("s3 bucket {:?} in {region}", c.bucket),
        };
        let t = c.tuning().map_err(|e| config_error(&describe, e))?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&c.bucket)
            .with_region(region)
            .with_allow_http(c.allow_http)
            .with_virtual_hosted_style_request(c.virtual_hosted)
            .with_client_options(client_options(&t, c.allow_http))
            .with_retry(retry(&t));
        if let Some(endpoint) = &c.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &c.access_key_id {
            builder = builder.with_access_key_id(key.expose());
        }
        if let Some(secret) = &c.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose());
        }
        if let Some(token) = &c.session_token {
            builder = builder.with_token(token.expose());
        }
        let store = builder.build().map_err(|e| config_error(&describe, e))?;
        Ok(ObjectBackend::with_prefix(
            store,
            c.prefix.as_deref(),
            describe,
        ))
    }

    pub fn gcs(c: &GcsConfig) -> Result<ObjectBackend, BackendError> {
        let endpoint = c.endpoint.as_deref().map(|e| e.trim_end_matches('/'));
        if let Some(endpoint) = endpoint {
            // Before the description holds the endpoint: a refused one is not repeated.
            let bucket = format!("gcs bucket {:?}", c.bucket);
            check_endpoint(endpoint, c.allow_http).map_err(|e| config_error(&bucket, e))?;
        }
        let describe = match endpoint {
            Some(endpoint) => format!("gcs bucket {:?} at {endpoint}", c.bucket),
            None => format!("gcs bucket {:?}", c.bucket),
        };
        let t = c.tuning().map_err(|e| config_error(&describe, e))?;
        let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&c.bucket)
            .with_skip_signature(c.skip_signature)
            .with_client_options(client_options(&t, c.allow_http))
            .with_retry(retry(&t));
        if let Some(endpoint) = endpoint {
            builder = builder.with_base_url(endpoint);
        }
        if let Some(token) = &c.bearer_token {
            builder = builder.with_bearer_token(token.expose());
        } else if c.skip_signature {
            // object_store 0.14's skip_signature spares reads only: its puts, multipart
            // requests and deletes still ask the credential provider, which without a key is
            // the instance metadata server. An empty static token (what a key with
            // "disable_oauth" gives) is fetched from nowhere; those requests carry it as
            // "Authorization: Bearer " with nothing after it, reads carry none.
            let empty = object_store::gcp::GcpCredential {
                bearer: String::new(),
            };
            builder = builder
                .with_credentials(Arc::new(object_store::StaticCredentialProvider::new(empty)));
        }
        if let Some(path) = &c.service_account_path {
            builder = builder.with_service_account_path(path.display().to_string());
        }
        if let Some(key) = &c.service_account_key {
            builder = builder.with_service_account_key(key.expose());
        }
        let store = builder.build().map_err(|e| config_error(&describe, e))?;
        Ok(ObjectBackend::with_prefix(
            store,
            c.prefix.as_deref(),
            describe,
        ))
    }

    pub fn azure(c: &AzureConfig) -> Result<ObjectBackend, BackendError> {
        let describe = match &c.endpoint {
            Some(endpoint) => format!("azure container {:?} at {endpoint}", c.container),
            None => format!(
                "azure container {:?} of account {:?}",
                c.container,
                c.account
                    .as_deref()
                    .unwrap_or("(from AZURE_STORAGE_ACCOUNT_NAME)")
            ),
        };
        let t = c.tuning().map_err(|e| config_error(&describe, e))?;
        let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(&c.container)
            .with_allow_http(c.allow_http)
            .with_use_emulator(c.use_emulator)
            .with_client_options(client_options(&t, c.allow_http))
            .with_retry(retry(&t));
        if let Some(account) = &c.account {
            builder = builder.with_account(account);
        }
        if let Some(key) = &c.access_key {
            builder = builder.with_access_key(key.expose());
        }
        if let Some(endpoint) = &c.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let store = builder.build().map_err(|e| config_error(&describe, e))?;
        Ok(ObjectBackend::with_prefix(
            store,
            c.prefix.as_deref(),
            describe,
        ))
    }

    fn with_prefix<T: ObjectStore>(
        store: T,
        prefix: Option<&str>,
        describe: String,
    ) -> ObjectBackend {
        let prefix = prefix
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty());
        let (store, describe): (Arc<dyn ObjectStore>, String) = match prefix {
            Some(prefix) => (
                Arc::new(PrefixStore::new(store, prefix)),
                format!("{describe} (prefix {prefix:?})"),
            ),
            None => (Arc::new(store), describe),
        };
        ObjectBackend { store, describe }
    }

    fn error(&self, op: &str, key: &str, e: object_store::Error) -> BackendError {
        let kind = match e {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::InvalidPath { .. } => ErrorKind::Invalid,
            object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::Unavailable,
        };
        BackendError::new(kind, format!("{}: {op} {key}: {e}", self.describe))
    }

    fn path(&self, key: &Key) -> Result<ObjectPath, BackendError> {
        ObjectPath::parse(key.path())
            .map_err(|e| BackendError::invalid(format!("{}: key {key}: {e}", self.describe)))
    }
}

/// Where a put's bytes come from, on the backend runtime.
enum Source {
    File { file: tokio::fs::File, left: u64 },
    Channel(flume::Receiver<Result<Bytes, BackendError>>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Bytes>, BackendError> {
        match self {
            Source::File { file, left } => {
                if *left == 0 {
                    return Ok(None);
                }
                // At most CHUNK_BYTES_MAX: fits in usize.
                let want = (*left).min(CHUNK_BYTES_MAX as u64) as usize;
                let mut buf = vec![0u8; want];
                let mut filled = 0;
                while filled < want {
                    let n = file.read(&mut buf[filled..]).await.map_err(|e| {
                        BackendError::unavailable(format!("reading the source: {e}"))
                    })?;
                    if n == 0 {
                        return Err(BackendError::invalid(format!(
                            "the source file ended {} bytes early",
                            *left - filled as u64
                        )));
                    }
                    filled += n;
                }
                *left -= want as u64;
                Ok(Some(Bytes::from(buf)))
            }
            // A closed channel ends the source; the length check finds a short one.
            Source::Channel(receiver) => match receiver.recv_async().await {
                Ok(chunk) => chunk.map(Some),
                Err(_) => Ok(None),
            },
        }
    }
}

async fn open_source(path: PathBuf, len: u64) -> Result<Source, BackendError> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| BackendError::invalid(format!("opening {} to put it: {e}", path.display())))?;
    let have = file
        .metadata()
        .await
        .map_err(|e| BackendError::invalid(format!("{}: {e}", path.display())))?
        .len();
    if have < len {
        return Err(BackendError::invalid(format!(
            "{} holds {have} bytes, fewer than {len}",
            path.display()
        )));
    }
    Ok(Source::File { file, left: len })
}

/// The put itself, on the backend runtime.
async fn put_from(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    mut source: Source,
    len: u64,
    what: String,
) -> Result<(), BackendError> {
    let store_error = |e: object_store::Error| BackendError::unavailable(format!("{what}: {e}"));
    let too_long =
        || BackendError::invalid(format!("{what}: the source holds more than {len} bytes"));
    let short = |got: u64| {
        BackendError::invalid(format!(
            "{what}: the source ended after {got} of {len} bytes"
        ))
    };
    if len <= SINGLE_PUT_BYTES_MAX {
        // At most SINGLE_PUT_BYTES_MAX: fits in usize.
        let mut body = BytesMut::with_capacity(len as usize);
        while let Some(chunk) = source.next().await? {
            if body.len() as u64 + chunk.len() as u64 > len {
                return Err(too_long());
            }
            body.extend_from_slice(&chunk);
        }
        if (body.len() as u64) < len {
            return Err(short(body.len() as u64));
        }
        store
            .put(&path, PutPayload::from(body.freeze()))
            .await
            .map_err(store_error)?;
        return Ok(());
    }
    let upload = store.put_multipart(&path).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut sent = 0u64;
    let failure = loop {
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            break store_error(e);
        }
        match source.next().await {
            Ok(Some(chunk)) => {
                sent += chunk.len() as u64;
                if sent > len {
                    break too_long();
                }
                writer.put(chunk);
            }
            Ok(None) if sent == len => {
                writer.finish().await.map_err(store_error)?;
                return Ok(());
            }
            Ok(None) => break short(sent),
            Err(e) => break e,
        }
    };
    if let Err(e) = writer.abort().await {
        tracing::warn!(%what, error = %e, "aborting a failed multipart upload");
    }
    Err(failure)
}

impl Backend for ObjectBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let store = Arc::clone(&self.store);
            let result = runtime::run(async move { Ok(store.head(&path).await) }).await?;
            match result {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error("stat", key.path(), e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        Box::pin(async move {
            let path = self.path(key)?;
            let get_range = match range {
                None => None,
                Some(range) => {
                    let Some(len) = self.stat(key).await? else {
                        return Err(BackendError::new(
                            ErrorKind::NotFound,
                            format!("{}: get {key}: not found", self.describe),
                        ));
                    };
                    let range = resolve_range(key, Some(range), len)?;
                    if range.is_empty() {
                        return Ok(ByteStream::from_bytes(Bytes::new()));
                    }
                    Some(GetRange::Bounded(range))
                }
            };
            let store = Arc::clone(&self.store);
            let result = runtime::run(async move {
                let options = GetOptions {
                    range: get_range,
                    ..GetOptions::default()
                };
                Ok(store.get_opts(&path, options).await)
            })
            .await?
            .map_err(|e| self.error("get", key.path(), e))?;
            let len = result.range.end - result.range.start;
            let what = format!("{}: get {key}", self.describe);
            let what_chunks = what.clone();
            let stream = result
                .into_stream()
                .map_err(move |e| BackendError::unavailable(format!("{what_chunks}: {e}")));
            runtime::stream_from(len, what, stream)
        })
    }

    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let store = Arc::clone(&self.store);
            let what = format!("{}: put {key}", self.describe);
            match source {
                PutSource::File(file) => {
                    runtime::run(async move {
                        let source = open_source(file, len).await?;
                        put_from(store, path, source, len, what).await
                    })
                    .await
                }
                PutSource::Stream(stream) => {
                    if stream.len() != len {
                        return Err(BackendError::invalid(format!(
                            "{what}: the stream holds {} bytes, not {len}",
                            stream.len()
                        )));
                    }
                    let (sender, receiver) = flume::bounded(super::STREAM_CHUNKS_IN_FLIGHT);
                    let put =
                        runtime::run(put_from(store, path, Source::Channel(receiver), len, what));
                    let (result, ()) =
                        futures_util::future::join(put, runtime::pump_into(stream, sender)).await;
                    result
                }
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
            let prefix_path = (!prefix.is_empty())
                .then(|| ObjectPath::parse(prefix))
                .transpose()
                .map_err(|e| BackendError::invalid(format!("prefix {prefix:?}: {e}")))?;
            let after = page
                .after
                .map(ObjectPath::parse)
                .transpose()
                .map_err(|e| BackendError::invalid(format!("after: {e}")))?;
            let limit = page.limit();
            let store = Arc::clone(&self.store);
            let listed = runtime::run(async move {
                let stream = match &after {
                    Some(after) => store.list_with_offset(prefix_path.as_ref(), after),
                    None => store.list(prefix_path.as_ref()),
                };
                Ok(stream.take(limit + 1).try_collect::<Vec<_>>().await)
            })
            .await?
            .map_err(|e| self.error("list", prefix, e))?;
            let mut entries: Vec<Entry> = listed
                .into_iter()
                .map(|meta| Entry {
                    path: meta.location.to_string(),
                    len: Some(meta.size),
                })
                .collect();
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            let next = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|e| e.path.clone())
            } else {
                None
            };
            Ok(Page { entries, next })
        })
    }

    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let store = Arc::clone(&self.store);
            match runtime::run(async move { Ok(store.delete(&path).await) }).await? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error("delete", key.path(), e)),
            }
        })
    }

    fn check(&self) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let store = Arc::clone(&self.store);
            runtime::run(async move { Ok(store.list_with_delimiter(None).await) })
                .await?
                .map(|_| ())
                .map_err(|e| {
                    BackendError::new(
                        ErrorKind::Config,
                        format!("{}: the bucket cannot be listed: {e}", self.describe),
                    )
                })
        })
    }
}
