//! The tokio runtime the remote backends run on, and the bridge to compio.
//!
//! `object_store` and `reqwest` need tokio; the data plane is compio. So every remote
//! operation runs as a task on **one** small multi-threaded tokio runtime per process
//! ([`RUNTIME_THREADS`] workers, [`BLOCKING_THREADS_MAX`] blocking threads, named
//! `shoal-backend`), started on first use and shared by every backend. A compio task awaits
//! the result through a oneshot channel ([`run`]); a stream crosses through a bounded `flume`
//! channel of [`STREAM_CHUNKS_IN_FLIGHT`] chunks ([`stream_from`], [`pump_into`]), which
//! wakes either runtime. Dropping the compio side's future aborts the tokio task.

use std::future::Future;
use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};

use super::{BackendError, ByteStream, STREAM_CHUNKS_IN_FLIGHT};

/// Worker threads of the backend runtime: remote backends wait on the network, so two are
/// plenty next to the data plane's shards.
pub const RUNTIME_THREADS: usize = 2;

/// Threads for tokio's blocking work (file reads of puts).
pub const BLOCKING_THREADS_MAX: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime's handle, starting it on the first call.
pub fn handle() -> Result<Handle, BackendError> {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .max_blocking_threads(BLOCKING_THREADS_MAX)
            .thread_name("shoal-backend")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the backend runtime: {e}"))
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(message) => Err(BackendError::unavailable(message.clone())),
    }
}

/// Aborts a tokio task when dropped (the compio side gave up waiting).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `future` on the backend runtime and waits for its result from any executor.
pub async fn run<T, F>(future: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    let handle = handle()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let task = handle.spawn(async move {
        let _ = sender.send(future.await);
    });
    let _abort = AbortOnDrop(task.abort_handle());
    receiver
        .await
        .map_err(|_| BackendError::unavailable("the backend runtime dropped an operation"))?
}

/// Forwards `stream` (polled on the backend runtime) to a [`ByteStream`] of `len` bytes for
/// the caller's executor. At most [`STREAM_CHUNKS_IN_FLIGHT`] chunks wait between them;
/// dropping the `ByteStream` ends the forwarding task, which drops `stream` (and its
/// connection). A stream that ends short of `len` bytes ends the `ByteStream` with an error.
pub fn stream_from<S>(len: u64, what: String, stream: S) -> Result<ByteStream, BackendError>
where
    S: Stream<Item = Result<Bytes, BackendError>> + Send + 'static,
{
    let handle = handle()?;
    let (sender, receiver) = flume::bounded(STREAM_CHUNKS_IN_FLIGHT);
    let task = handle.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut sent = 0u64;
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            let chunk = chunk.and_then(|bytes| {
                sent += bytes.len() as u64;
                if sent > len {
                    return Err(BackendError::unavailable(format!(
                        "{what}: the upstream sent more than the {len} bytes it announced"
                    )));
                }
                Ok(bytes)
            });
            let over = chunk.is_err();
            if sender.send_async(chunk).await.is_err() || failed || over {
                return;
            }
        }
        if sent < len {
            let _ = sender
                .send_async(Err(BackendError::unavailable(format!(
                    "{what}: the upstream ended after {sent} of {len} bytes"
                ))))
                .await;
        }
    });
    let abort = AbortOnDrop(task.abort_handle());
    let stream = receiver.into_stream().map(move |chunk| {
        let _keep = &abort;
        chunk
    });
    Ok(ByteStream::new(len, stream))
}

/// Feeds a [`ByteStream`] (polled on the caller's executor) into a channel whose receiver
/// a put on the backend runtime reads. Returns when the stream ends, fails, or the receiver
/// is gone; a failure is sent on as the last item.
pub async fn pump_into(mut stream: ByteStream, sender: flume::Sender<Result<Bytes, BackendError>>) {
    while let Some(chunk) = stream.next_chunk().await {
        let failed = chunk.is_err();
        if sender.send_async(chunk).await.is_err() || failed {
            return;
        }
    }
}
