//! Tracker-protocol frames on a compio TCP stream: read one whole frame, write one frame.

use std::io;
use std::mem;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use shoal_proto::tracker_wire::{self, TrackerWireError};

/// Smallest room a read is given: tracker frames other than metainfo are small, so most
/// requests and responses arrive in one read.
pub const READ_CHUNK_LEN: usize = 16 * 1024;

/// A reader left empty with more capacity than this gives it back.
const KEEP_CAPACITY_MAX: usize = 1 << 20;

/// Most bytes a [`FrameReader`] ever holds: one largest frame.
pub const FRAME_BUF_LEN_MAX: usize = 4 + tracker_wire::FRAME_LEN_MAX;

const _: () = assert!(READ_CHUNK_LEN <= FRAME_BUF_LEN_MAX);

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// End of stream between frames (the usual way a connection ends).
    #[error("connection closed")]
    Closed,
    /// End of stream inside a frame.
    #[error("connection closed inside a frame after {received} bytes")]
    Truncated { received: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] TrackerWireError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A parser of one direction: [`tracker_wire::parse_request`] or
/// [`tracker_wire::parse_response`].
pub type ParseFn<T> = fn(&[u8]) -> Result<Option<(T, usize)>, TrackerWireError>;

/// Reads whole frames off a stream. The buffer grows only as bytes arrive (at most doubling
/// what is held, never beyond the frame being read, so never beyond [`FRAME_BUF_LEN_MAX`]):
/// a peer that claims a large frame and sends nothing costs no memory. Bytes after a frame
/// are kept for the next call, so pipelined requests work.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Received, unconsumed bytes are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Reads until one whole frame is buffered and parses it with `parse`. Not cancel-safe
    /// in the sense that a dropped future loses the bytes of an in-flight read: after a
    /// timeout, drop the connection.
    pub async fn next<T>(
        &mut self,
        stream: &mut TcpStream,
        parse: ParseFn<T>,
    ) -> Result<T, FrameError> {
        loop {
            if let Some((message, consumed)) = parse(&self.buf[self.start..])? {
                self.start += consumed;
                if self.start == self.buf.len() {
                    self.start = 0;
                    self.buf.clear();
                    if self.buf.capacity() > KEEP_CAPACITY_MAX {
                        // A metainfo frame passed: do not hold its memory while idle.
                        self.buf = Vec::new();
                    }
                }
                return Ok(message);
            }
            self.compact();
            self.make_room();
            let buf = mem::take(&mut self.buf);
            let len = buf.len();
            let capacity = buf.capacity();
            let BufResult(result, slice) = stream.read(buf.slice(len..capacity)).await;
            self.buf = slice.into_inner();
            if result? == 0 {
                return Err(match self.buf.len() {
                    0 => FrameError::Closed,
                    received => FrameError::Truncated { received },
                });
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
    }

    /// Gives the next read room: at least [`READ_CHUNK_LEN`], or what the incomplete frame
    /// still needs but at most as much again as is held (doubling), never beyond
    /// [`FRAME_BUF_LEN_MAX`]. `parse` found no whole frame and no error, so a visible length
    /// prefix is within the codec's bounds and the frame is longer than what is held.
    fn make_room(&mut self) {
        let held = self.buf.len();
        let needed = match self.buf.first_chunk::<4>() {
            Some(prefix) => (4 + u32::from_be_bytes(*prefix) as usize).saturating_sub(held),
            None => READ_CHUNK_LEN,
        };
        let target = (held + READ_CHUNK_LEN.max(needed.min(held))).min(FRAME_BUF_LEN_MAX);
        debug_assert!(target > held);
        if self.buf.capacity() < target {
            self.buf.reserve_exact(target - held);
        }
    }
}

/// Writes `frame` (one whole encoded frame) to `stream`; gives the buffer back for reuse.
pub async fn write_frame(stream: &mut TcpStream, frame: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let BufResult(result, frame) = stream.write_all(frame).await;
    (result, frame)
}
