//! A whole peer connection: both halves together.

use std::net::SocketAddr;

use compio::fs::File;
use compio::net::TcpStream;
use shoal_proto::metainfo::PieceVerifier;
use shoal_proto::wire::{Message, PieceHeader};

use super::{PeerReader, PeerWriter, TransportError, UploadPath, Verdict};

/// One peer connection: a [`PeerReader`] and a [`PeerWriter`] over the same socket. Its
/// methods are theirs; [`PeerConn::into_split`] gives them to two tasks.
#[derive(Debug)]
pub struct PeerConn {
    reader: PeerReader,
    writer: PeerWriter,
    /// For logs; `None` if the socket could not tell.
    peer_addr: Option<SocketAddr>,
}

impl PeerConn {
    /// Wraps a connected stream (dialled or accepted, handshake not yet exchanged). Turns
    /// Nagle's algorithm off: requests and haves are small and latency-bound, and payloads go
    /// out in large writes anyway. Must be called inside the compio runtime that will drive
    /// the connection; `upload_path` falls back to Copy on the polling driver.
    pub fn new(stream: TcpStream, upload_path: UploadPath) -> Result<PeerConn, TransportError> {
        PeerConn::with_received(stream, Vec::new(), upload_path)
    }

    /// Like [`PeerConn::new`], for a stream whose first bytes were already read elsewhere
    /// (by [`super::read_handshake`] on the shard that accepted it): `received` are the bytes
    /// read past the handshake, which [`PeerConn::recv`] returns first. At most
    /// [`super::RECV_BUF_LEN`] bytes; more is refused ([`TransportError::BufferTooSmall`]).
    pub fn with_received(
        stream: TcpStream,
        received: Vec<u8>,
        upload_path: UploadPath,
    ) -> Result<PeerConn, TransportError> {
        if received.len() > super::RECV_BUF_LEN {
            return Err(TransportError::BufferTooSmall {
                length: received.len(),
                capacity: super::RECV_BUF_LEN,
            });
        }
        stream
            .set_nodelay(true)
            .map_err(TransportError::io("set TCP_NODELAY"))?;
        let peer_addr = stream.peer_addr().ok();
        let (read_half, write_half) = stream.into_split();
        Ok(PeerConn {
            reader: PeerReader::with_received(read_half, &received),
            writer: PeerWriter::new(write_half, upload_path),
            peer_addr,
        })
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// See [`PeerWriter::upload_path`].
    pub fn upload_path(&self) -> UploadPath {
        self.writer.upload_path()
    }

    /// The two halves, for a reading task and a writing task.
    pub fn into_split(self) -> (PeerReader, PeerWriter) {
        (self.reader, self.writer)
    }

    /// See [`PeerWriter::send_message`].
    pub async fn send_message(&mut self, message: &Message) -> Result<(), TransportError> {
        self.writer.send_message(message).await
    }

    /// See [`PeerWriter::send_piece`].
    pub async fn send_piece(
        &mut self,
        header: PieceHeader,
        file: &File,
        offset: u64,
    ) -> Result<(), TransportError> {
        self.writer.send_piece(header, file, offset).await
    }

    /// See [`PeerReader::recv`].
    pub async fn recv(&mut self) -> Result<Message, TransportError> {
        self.reader.recv().await
    }

    /// See [`PeerReader::payload_pending`].
    pub fn payload_pending(&self) -> usize {
        self.reader.payload_pending()
    }

    #[cfg(test)]
    pub(crate) fn reader(&self) -> &PeerReader {
        &self.reader
    }

    /// See [`PeerReader::recv_piece_payload`].
    pub async fn recv_piece_payload(
        &mut self,
        verifier: PieceVerifier,
        piece: Vec<u8>,
    ) -> (Result<Verdict, TransportError>, Vec<u8>) {
        self.reader.recv_piece_payload(verifier, piece).await
    }

    /// See [`PeerReader::skip_piece_payload`].
    pub async fn skip_piece_payload(&mut self) -> Result<(), TransportError> {
        self.reader.skip_piece_payload().await
    }
}
