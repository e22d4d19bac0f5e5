//! The sending half: frames through `wire::encode`, piece payloads from a file by splice or
//! by copy.

use std::io;
use std::mem;
use std::os::fd::OwnedFd;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::op::SpliceFlags;
use compio::driver::{DriverType, SharedFd, ToSharedFd};
use compio::fs::File;
use compio::io::{AsyncReadAtExt, AsyncWriteExt};
use compio::net::TcpStream;
use compio::runtime::Runtime;
use shoal_proto::wire::{self, Message, PieceHeader};

use super::{PIPE_LEN, SEND_BUF_LEN, TransportError, UPLOAD_CHUNK_LEN};

/// How piece payloads leave the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadPath {
    /// file → pipe → socket with `splice`: the payload never enters user space. io_uring
    /// only; a writer on the polling driver copies instead.
    Splice,
    /// `read_exact_at` into a buffer of [`UPLOAD_CHUNK_LEN`], then `write_all`.
    Copy,
}

/// The sending half of a peer connection. See the module docs.
#[derive(Debug)]
pub struct PeerWriter {
    stream: TcpStream,
    /// The path in effect: the one asked for, or Copy on a driver that cannot splice files.
    upload_path: UploadPath,
    /// Encoded frames on their way out; capacity [`SEND_BUF_LEN`], reused.
    frame_buf: Vec<u8>,
    /// The copy path's buffer, [`UPLOAD_CHUNK_LEN`]; allocated by the first copied piece.
    chunk_buf: Vec<u8>,
    /// The splice path's pipe; created by the first spliced piece.
    pipe: Option<SplicePipe>,
    /// Set at the start of every operation that writes, cleared when it succeeds: still set
    /// means an error, or a future dropped mid-write, left the stream position unknown.
    poisoned: bool,
}

impl PeerWriter {
    /// Must be called inside a compio runtime (it reads the runtime's driver).
    pub(crate) fn new(stream: TcpStream, upload_path: UploadPath) -> PeerWriter {
        let upload_path = match (upload_path, current_driver()) {
            (UploadPath::Splice, DriverType::IoUring) => UploadPath::Splice,
            (UploadPath::Splice, driver) => {
                tracing::debug!(?driver, "no splice from files on this driver: copying");
                UploadPath::Copy
            }
            (UploadPath::Copy, _) => UploadPath::Copy,
        };
        PeerWriter {
            stream,
            upload_path,
            frame_buf: Vec::with_capacity(SEND_BUF_LEN),
            chunk_buf: Vec::new(),
            pipe: None,
            poisoned: false,
        }
    }

    /// The upload path in effect (Copy on the polling driver, whatever was asked).
    pub fn upload_path(&self) -> UploadPath {
        self.upload_path
    }

    /// Sends one message. A [`Message::Piece`] header is refused: it goes out with its payload
    /// through [`PeerWriter::send_piece`].
    pub async fn send_message(&mut self, message: &Message) -> Result<(), TransportError> {
        if matches!(message, Message::Piece(_)) {
            return Err(TransportError::PieceNeedsPayload);
        }
        self.begin()?;
        self.encode(message);
        let frame = mem::take(&mut self.frame_buf);
        let BufResult(result, frame) = self.stream.write_all(frame).await;
        self.frame_buf = frame;
        result.map_err(TransportError::io("send"))?;
        self.poisoned = false;
        Ok(())
    }

    /// Sends a Piece header and then its `header.length` payload bytes, read from `file` at
    /// `offset` (the piece's offset in the blob: `Metainfo::piece_offset`). The caller serves
    /// only pieces it has verified and stored; a file shorter than `offset + length` fails
    /// with an `UnexpectedEof` I/O error (and poisons the writer: the header is already out).
    pub async fn send_piece(
        &mut self,
        header: PieceHeader,
        file: &File,
        offset: u64,
    ) -> Result<(), TransportError> {
        self.begin()?;
        self.encode(&Message::Piece(header));
        // Lossless: the codec bounds it by PIECE_LEN_MAX.
        let length = header.length as usize;
        match self.upload_path {
            UploadPath::Copy => self.copy_payload(file, offset, length).await?,
            UploadPath::Splice => {
                let frame = mem::take(&mut self.frame_buf);
                let BufResult(result, frame) = self.stream.write_all(frame).await;
                self.frame_buf = frame;
                result.map_err(TransportError::io("send"))?;
                self.splice_payload(file, offset, length).await?;
            }
        }
        self.poisoned = false;
        Ok(())
    }

    fn begin(&mut self) -> Result<(), TransportError> {
        if self.poisoned {
            return Err(TransportError::Poisoned);
        }
        self.poisoned = true;
        Ok(())
    }

    fn encode(&mut self, message: &Message) {
        self.frame_buf.clear();
        wire::encode(message, &mut self.frame_buf);
        debug_assert!(self.frame_buf.len() <= SEND_BUF_LEN);
    }

    /// The encoded header (in `frame_buf`) and the payload, in writes of at most
    /// [`UPLOAD_CHUNK_LEN`]; the header rides in front of the first chunk.
    async fn copy_payload(
        &mut self,
        file: &File,
        offset: u64,
        length: usize,
    ) -> Result<(), TransportError> {
        let mut chunk = mem::take(&mut self.chunk_buf);
        if chunk.capacity() < UPLOAD_CHUNK_LEN {
            chunk = Vec::with_capacity(UPLOAD_CHUNK_LEN);
        }
        chunk.clear();
        chunk.extend_from_slice(&self.frame_buf);
        let mut sent = 0;
        while sent < length {
            let head = chunk.len();
            let n = (length - sent).min(UPLOAD_CHUNK_LEN - head);
            let BufResult(result, slice) = file
                .read_exact_at(chunk.slice(head..head + n), offset + sent as u64)
                .await;
            chunk = slice.into_inner();
            result.map_err(TransportError::io("read piece"))?;
            debug_assert_eq!(chunk.len(), head + n);
            let BufResult(result, written) = self.stream.write_all(chunk).await;
            chunk = written;
            result.map_err(TransportError::io("send payload"))?;
            sent += n;
            chunk.clear();
        }
        self.chunk_buf = chunk;
        Ok(())
    }

    /// The payload by splice: file → pipe, then pipe → socket until the pipe is empty, in
    /// rounds of at most the pipe's size.
    async fn splice_payload(
        &mut self,
        file: &File,
        offset: u64,
        length: usize,
    ) -> Result<(), TransportError> {
        // Taken out while in use, put back only after a clean round: a failed splice may
        // leave bytes in the pipe, so that pipe is dropped with the (poisoned) writer state.
        let pipe = match self.pipe.take() {
            Some(pipe) => pipe,
            None => SplicePipe::new().map_err(TransportError::io("create pipe"))?,
        };
        let file_fd = file.to_shared_fd();
        let socket_fd = self.stream.to_shared_fd();
        let mut sent = 0;
        while sent < length {
            let round = (length - sent).min(pipe.capacity);
            let position = i64::try_from(offset + sent as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                .map_err(TransportError::io("splice from file"))?;
            let filled = compio::fs::pipe::splice(&file_fd, &pipe.write, round)
                .offset_in(position)
                .await
                .map_err(TransportError::io("splice from file"))?;
            if filled == 0 {
                let error = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(TransportError::io("splice from file")(error));
            }
            let more = sent + filled < length;
            let mut in_pipe = filled;
            while in_pipe > 0 {
                // MORE: the socket may hold back a partial segment, more payload follows.
                let flags = if more {
                    SpliceFlags::MORE
                } else {
                    SpliceFlags::empty()
                };
                let moved = compio::fs::pipe::splice(&pipe.read, &socket_fd, in_pipe)
                    .flags(flags.bits())
                    .await
                    .map_err(TransportError::io("splice to socket"))?;
                if moved == 0 {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(TransportError::io("splice to socket")(error));
                }
                in_pipe -= moved;
            }
            sent += filled;
        }
        self.pipe = Some(pipe);
        Ok(())
    }
}

/// An anonymous pipe for splicing, both ends blocking: io_uring runs the splices on its
/// kernel workers, which may block; the shard never does.
#[derive(Debug)]
struct SplicePipe {
    read: SharedFd<OwnedFd>,
    write: SharedFd<OwnedFd>,
    /// Bytes the pipe holds: [`PIPE_LEN`] if the kernel allowed it, else its default.
    capacity: usize,
}

impl SplicePipe {
    fn new() -> io::Result<SplicePipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let capacity = match rustix::pipe::fcntl_setpipe_size(&write, PIPE_LEN) {
            Ok(size) => size,
            Err(errno) => {
                tracing::debug!(%errno, "F_SETPIPE_SZ refused; keeping the default pipe size");
                rustix::pipe::fcntl_getpipe_size(&write)?
            }
        };
        debug_assert!(capacity > 0);
        Ok(SplicePipe {
            read: SharedFd::new(read),
            write: SharedFd::new(write),
            capacity,
        })
    }
}

fn current_driver() -> DriverType {
    Runtime::with_current(|runtime| runtime.driver_type())
}
