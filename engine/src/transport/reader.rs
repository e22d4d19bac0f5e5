//! The receiving half: frames through `wire::parse`, piece payloads hashed as they arrive.

use std::mem;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncRead;
use compio::net::TcpStream;
use shoal_proto::metainfo::PieceVerifier;
use shoal_proto::wire::{self, Message};

use super::{
    LENGTH_PREFIX_LEN, PAYLOAD_READ_LEN_MAX, READ_CHUNK_LEN, RECV_BUF_LEN, TransportError,
};

/// Whether a received payload matched the piece hash it was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// SHA-256 matched: the bytes may be written and announced.
    Verified,
    /// SHA-256 did not match: discard the bytes, drop and blacklist the peer.
    Corrupt,
}

/// The receiving half of a peer connection. See the module docs.
#[derive(Debug)]
pub struct PeerReader {
    stream: TcpStream,
    /// Bytes received and not yet consumed are `buf[start..]`. The capacity is
    /// [`RECV_BUF_LEN`] for the reader's whole life: reads never grow it.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// Payload bytes of the last Piece header that the caller has not taken yet; `recv`
    /// refuses to parse past them.
    payload_pending: usize,
    /// Set at the start of every operation that reads, cleared when it succeeds: still set
    /// means an error, or a future dropped mid-read, left the stream position unknown.
    poisoned: bool,
}

impl PeerReader {
    /// A reader whose receive buffer starts with `received` (at most [`RECV_BUF_LEN`]
    /// bytes, checked by the caller).
    pub(crate) fn with_received(stream: TcpStream, received: &[u8]) -> PeerReader {
        debug_assert!(received.len() <= RECV_BUF_LEN);
        let mut buf = Vec::with_capacity(RECV_BUF_LEN);
        buf.extend_from_slice(received);
        PeerReader {
            stream,
            buf,
            start: 0,
            payload_pending: 0,
            poisoned: false,
        }
    }

    /// Payload bytes of the last received Piece header still to be taken (0 when none).
    pub fn payload_pending(&self) -> usize {
        self.payload_pending
    }

    /// Capacity of the receive buffer, for the tests of its bound.
    #[cfg(test)]
    pub(crate) fn recv_buf_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Receives the next message. After a [`Message::Piece`] header, the payload must be taken
    /// ([`PeerReader::recv_piece_payload`]) or skipped before the next call.
    ///
    /// [`TransportError::Closed`] when the peer closed the connection between frames,
    /// [`TransportError::Truncated`] when it closed inside one, [`TransportError::Malformed`]
    /// as soon as the bytes received show a frame to be invalid (without waiting for the
    /// rest of it).
    pub async fn recv(&mut self) -> Result<Message, TransportError> {
        self.begin()?;
        if self.payload_pending > 0 {
            self.poisoned = false;
            return Err(TransportError::PayloadPending {
                length: self.payload_pending,
            });
        }
        let message = self.recv_frame().await?;
        if let Message::Piece(header) = &message {
            // Lossless: the codec bounds it by PIECE_LEN_MAX.
            self.payload_pending = header.length as usize;
        }
        self.poisoned = false;
        Ok(message)
    }

    /// Reads the pending piece payload into `piece` (cleared first; its capacity must hold the
    /// payload, nothing is allocated here) while feeding it to `verifier` (the metainfo's
    /// check of the piece the header named: checking that the header's piece and length
    /// belong to the stripe is the caller's job).
    ///
    /// The buffer comes back whatever happens, holding the payload on success; only a future
    /// dropped before it finished loses it (and poisons the reader). Bytes of a
    /// [`Verdict::Corrupt`] payload must not be written anywhere.
    pub async fn recv_piece_payload(
        &mut self,
        mut verifier: PieceVerifier,
        mut piece: Vec<u8>,
    ) -> (Result<Verdict, TransportError>, Vec<u8>) {
        if let Err(error) = self.begin() {
            return (Err(error), piece);
        }
        let length = self.payload_pending;
        let refusal = if length == 0 {
            Some(TransportError::NoPayloadPending)
        } else if piece.capacity() < length {
            Some(TransportError::BufferTooSmall {
                length,
                capacity: piece.capacity(),
            })
        } else {
            None
        };
        if let Some(error) = refusal {
            self.poisoned = false;
            return (Err(error), piece);
        }

        piece.clear();
        let buffered = self.take_buffered(length);
        piece.extend_from_slice(buffered);
        verifier.update(buffered);
        while piece.len() < length {
            let filled = piece.len();
            let end = filled + (length - filled).min(PAYLOAD_READ_LEN_MAX);
            let BufResult(result, slice) = self.stream.read(piece.slice(filled..end)).await;
            piece = slice.into_inner();
            match result {
                Ok(0) => {
                    let error = TransportError::Truncated {
                        during: "piece payload",
                        received: filled,
                        expected: length,
                    };
                    return (Err(error), piece);
                }
                Ok(n) => {
                    debug_assert_eq!(piece.len(), filled + n);
                    verifier.update(&piece[filled..filled + n]);
                }
                Err(error) => return (Err(TransportError::io("recv payload")(error)), piece),
            }
        }
        debug_assert_eq!(piece.len(), length);
        self.payload_pending = 0;
        self.poisoned = false;
        let verdict = if verifier.verify() {
            Verdict::Verified
        } else {
            Verdict::Corrupt
        };
        (Ok(verdict), piece)
    }

    /// Reads the pending piece payload and throws it away (a piece the swarm did not want,
    /// for instance one cancelled in endgame). Goes through the receive buffer: no piece
    /// buffer needed.
    pub async fn skip_piece_payload(&mut self) -> Result<(), TransportError> {
        self.begin()?;
        if self.payload_pending == 0 {
            self.poisoned = false;
            return Err(TransportError::NoPayloadPending);
        }
        let length = self.payload_pending;
        let mut skipped = 0;
        loop {
            skipped += self.take_buffered(length - skipped).len();
            if skipped == length {
                break;
            }
            self.start = 0;
            self.buf.clear();
            if self.fill().await? == 0 {
                return Err(TransportError::Truncated {
                    during: "piece payload",
                    received: skipped,
                    expected: length,
                });
            }
        }
        self.payload_pending = 0;
        self.poisoned = false;
        Ok(())
    }

    /// Refuses to work on a poisoned stream; otherwise marks the stream as in use (poisoned
    /// until the operation clears it).
    fn begin(&mut self) -> Result<(), TransportError> {
        if self.poisoned {
            return Err(TransportError::Poisoned);
        }
        self.poisoned = true;
        Ok(())
    }

    async fn recv_frame(&mut self) -> Result<Message, TransportError> {
        loop {
            if let Some((message, consumed)) = wire::parse(&self.buf[self.start..])? {
                self.start += consumed;
                if self.start == self.buf.len() {
                    self.start = 0;
                    self.buf.clear();
                }
                return Ok(message);
            }
            self.compact();
            if self.fill().await? == 0 {
                let received = self.buf.len();
                if received == 0 {
                    return Err(TransportError::Closed);
                }
                // `check` said "incomplete": the prefix, if whole, is a valid frame length.
                let expected = match self.buf.get(..LENGTH_PREFIX_LEN) {
                    Some(prefix) => {
                        let mut frame_len = [0; LENGTH_PREFIX_LEN];
                        frame_len.copy_from_slice(prefix);
                        LENGTH_PREFIX_LEN + u32::from_be_bytes(frame_len) as usize
                    }
                    None => LENGTH_PREFIX_LEN,
                };
                return Err(TransportError::Truncated {
                    during: "frame",
                    received,
                    expected,
                });
            }
        }
    }

    /// Consumes up to `max` buffered bytes and returns them.
    fn take_buffered(&mut self, max: usize) -> &[u8] {
        let start = self.start;
        let end = self.buf.len().min(start + max);
        self.start = end;
        &self.buf[start..end]
    }

    /// Moves the unconsumed bytes (less than one frame: `parse` found no complete frame) to
    /// the front, so that the next read has at least [`READ_CHUNK_LEN`] of room.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        debug_assert!(RECV_BUF_LEN - self.buf.len() >= READ_CHUNK_LEN);
    }

    /// One read into the free end of the receive buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> Result<usize, TransportError> {
        let buf = mem::take(&mut self.buf);
        let len = buf.len();
        debug_assert!(len < RECV_BUF_LEN);
        let BufResult(result, slice) = self.stream.read(buf.slice(len..RECV_BUF_LEN)).await;
        self.buf = slice.into_inner();
        debug_assert!(self.buf.capacity() >= RECV_BUF_LEN);
        result.map_err(TransportError::io("recv"))
    }
}
