//! Response bodies for hyper on compio: empty, one buffer, or a blob streamed from the
//! engine's [`BlobReader`] in chunks of [`BLOB_CHUNK_BYTES`].
//!
//! Not `Send` (compio files are not), which hyper's http1 server allows. A blob body holds
//! one chunk at a time: it reads the next chunk only when hyper asks for it, that is once
//! the previous one has been handed to the connection, so a slow client holds one chunk of
//! memory and no more, and the whole blob is never buffered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use shoal_engine::BlobReader;
use shoal_engine::store::StoreError;

/// Bytes read from a blob per body frame. The compat layer between hyper and compio copies
/// every byte once more; 1 MiB chunks halve the CPU per GiB against 256 KiB
/// (COMPIO-NOTES: 0.36 against 0.63 CPU-s/GiB).
pub const BLOB_CHUNK_BYTES: usize = 1 << 20;

/// The body of every response the servers send.
#[derive(Debug)]
pub struct LocalBody {
    kind: Kind,
}

enum Kind {
    Empty,
    /// Taken when sent.
    Full(Option<Bytes>),
    Blob(BlobBody),
    /// Any other body (an upstream response relayed as it arrives).
    Stream(Pin<Box<dyn Body<Data = Bytes, Error = io::Error>>>),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Empty => f.write_str("Empty"),
            Kind::Full(bytes) => write!(f, "Full({:?} bytes)", bytes.as_ref().map(Bytes::len)),
            Kind::Blob(blob) => write!(f, "Blob({} bytes left)", blob.remaining),
            Kind::Stream(body) => write!(f, "Stream({:?})", body.size_hint()),
        }
    }
}

/// A chunk being read: the future owns the stream and its buffer and gives both back.
type ChunkRead = Pin<Box<dyn Future<Output = (Box<BlobReader>, Result<(), StoreError>, Vec<u8>)>>>;

struct BlobBody {
    state: BlobState,
    /// Bytes not yet handed to hyper (the exact size hint).
    remaining: u64,
}

enum BlobState {
    Idle(Box<BlobReader>),
    Reading(ChunkRead),
    Done,
}

impl LocalBody {
    pub fn empty() -> LocalBody {
        LocalBody { kind: Kind::Empty }
    }

    pub fn full(bytes: impl Into<Bytes>) -> LocalBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return LocalBody::empty();
        }
        LocalBody {
            kind: Kind::Full(Some(bytes)),
        }
    }

    /// Streams what remains of `stream`. A read error ends the body with an error, which
    /// makes hyper close the connection: the client sees fewer bytes than `Content-Length`.
    pub fn blob(stream: BlobReader) -> LocalBody {
        let remaining = stream.remaining();
        let state = if remaining == 0 {
            BlobState::Done
        } else {
            BlobState::Idle(Box::new(stream))
        };
        LocalBody {
            kind: Kind::Blob(BlobBody { state, remaining }),
        }
    }
}

impl LocalBody {
    /// Relays `body` frame by frame as hyper asks for them (so memory holds one frame at a
    /// time): the proxy uses it to pass an upstream's response on.
    pub fn stream(body: impl Body<Data = Bytes, Error = io::Error> + 'static) -> LocalBody {
        LocalBody {
            kind: Kind::Stream(Box::pin(body)),
        }
    }
}

fn read_chunk(mut stream: Box<BlobReader>) -> ChunkRead {
    Box::pin(async move {
        // Fits in usize: at most BLOB_CHUNK_BYTES.
        let len = stream.remaining().min(BLOB_CHUNK_BYTES as u64) as usize;
        let (result, buf) = stream.next_chunk(Vec::with_capacity(len)).await;
        (stream, result, buf)
    })
}

impl Body for LocalBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Blob(blob) => blob.poll_chunk(cx),
            Kind::Stream(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Blob(blob) => matches!(blob.state, BlobState::Done),
            Kind::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Blob(blob) => SizeHint::with_exact(blob.remaining),
            Kind::Stream(body) => body.size_hint(),
        }
    }
}

impl BlobBody {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            match std::mem::replace(&mut self.state, BlobState::Done) {
                BlobState::Done => return Poll::Ready(None),
                BlobState::Idle(stream) => {
                    if stream.remaining() == 0 {
                        return Poll::Ready(None);
                    }
                    self.state = BlobState::Reading(read_chunk(stream));
                }
                BlobState::Reading(mut read) => {
                    let (stream, result, buf) = match read.as_mut().poll(cx) {
                        Poll::Pending => {
                            self.state = BlobState::Reading(read);
                            return Poll::Pending;
                        }
                        Poll::Ready(done) => done,
                    };
                    if let Err(error) = result {
                        tracing::warn!(%error, "blob body ended early");
                        return Poll::Ready(Some(Err(io::Error::other(error))));
                    }
                    // A stream with bytes left never yields an empty chunk.
                    if buf.is_empty() {
                        return Poll::Ready(Some(Err(io::Error::other(
                            "blob stream yielded no bytes before its end",
                        ))));
                    }
                    self.remaining -= buf.len() as u64;
                    debug_assert_eq!(self.remaining, stream.remaining());
                    if stream.remaining() > 0 {
                        self.state = BlobState::Idle(stream);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn collect(mut body: LocalBody) -> Vec<u8> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => out.extend_from_slice(&frame.into_data().unwrap()),
                Poll::Ready(None) => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn empty_and_full_bodies() {
        let empty = LocalBody::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        assert!(collect(empty).is_empty());

        let full = LocalBody::full(&b"{}"[..]);
        assert!(!full.is_end_stream());
        assert_eq!(full.size_hint().exact(), Some(2));
        assert_eq!(collect(full), b"{}");

        assert!(LocalBody::full(Bytes::new()).is_end_stream());
    }
}
