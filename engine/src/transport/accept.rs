//! The first read on an accepted connection: its handshake, which names the (blob, stripe)
//! and so the shard that owns the connection.

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncRead;
use compio::net::TcpStream;
use shoal_proto::wire::{self, Handshake, Message};

use super::{READ_CHUNK_LEN, RECV_BUF_LEN, TransportError};

/// Reads the remote's handshake from a freshly accepted stream. Returns it together with the
/// bytes that arrived after it (to give to [`super::PeerConn::with_received`] on the owner
/// shard). Any other first message is [`TransportError::NotHandshake`]. Reads at most
/// [`RECV_BUF_LEN`] bytes; the caller bounds the time.
pub async fn read_handshake(
    stream: &mut TcpStream,
) -> Result<(Handshake, Vec<u8>), TransportError> {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF_LEN);
    loop {
        if let Some((message, consumed)) = wire::parse(&buf)? {
            let Message::Handshake(handshake) = message else {
                return Err(TransportError::NotHandshake {
                    kind: message.kind().name(),
                });
            };
            buf.drain(..consumed);
            return Ok((handshake, buf));
        }
        let len = buf.len();
        // parse found no whole frame: what is buffered is shorter than one frame, so a
        // read of READ_CHUNK_LEN always fits.
        debug_assert!(RECV_BUF_LEN - len >= READ_CHUNK_LEN);
        let BufResult(result, slice) = stream.read(buf.slice(len..len + READ_CHUNK_LEN)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) if len == 0 => return Err(TransportError::Closed),
            Ok(0) => {
                return Err(TransportError::Truncated {
                    during: "handshake",
                    received: len,
                    expected: len + 1,
                });
            }
            Ok(_) => {}
            Err(error) => return Err(TransportError::io("recv handshake")(error)),
        }
    }
}
