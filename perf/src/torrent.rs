//! BitTorrent metainfo (`.torrent`, BEP 3) for the swarm baseline of `shoal-perf`: one
//! single-file torrent per blob, bencoded, piece hashes SHA-1 as the format requires. Only
//! what the harness writes: no parser.

use std::io::Read;
use std::path::Path;

use sha1::Digest as _;

/// Smallest and largest piece the harness uses.
const PIECE_BYTES_MIN: u64 = 256 * 1024;
const PIECE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Aim for at most this many pieces (the usual size of a torrent's piece list).
const PIECES_TARGET: u64 = 2048;

/// A torrent file's bytes and its info hash.
#[derive(Debug, Clone)]
pub struct Torrent {
    pub bytes: Vec<u8>,
    pub info_hash: [u8; 20],
}

impl Torrent {
    /// The info hash as 40 lowercase hex digits (opentracker's whitelist format).
    pub fn info_hash_hex(&self) -> String {
        shoal_proto::types::hex(&self.info_hash)
    }

    /// The info hash percent-encoded for a tracker URL (`scrape?info_hash=`).
    pub fn info_hash_url(&self) -> String {
        self.info_hash.iter().map(|b| format!("%{b:02X}")).collect()
    }
}

/// Piece length for a blob of `len` bytes: a power of two in
/// [`PIECE_BYTES_MIN`, `PIECE_BYTES_MAX`] giving at most about [`PIECES_TARGET`] pieces.
pub fn piece_len(len: u64) -> u64 {
    let wanted = len.div_ceil(PIECES_TARGET).next_power_of_two();
    wanted.clamp(PIECE_BYTES_MIN, PIECE_BYTES_MAX)
}

fn bytes_field(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value);
}

fn int_field(out: &mut Vec<u8>, value: u64) {
    out.push(b'i');
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(b'e');
}

/// The torrent of the file at `path`, published as `name`, announced to `announce`.
pub fn make(path: &Path, name: &str, announce: &str) -> Result<Torrent, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let piece = piece_len(len);
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pieces = Vec::new();
    let mut buffer = vec![0u8; piece as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece) as usize;
        file.read_exact(&mut buffer[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        pieces.extend_from_slice(&sha1::Sha1::digest(&buffer[..n]));
        left -= n as u64;
    }
    // Keys in sorted order, as bencoding requires.
    let mut info = b"d".to_vec();
    bytes_field(&mut info, b"length");
    int_field(&mut info, len);
    bytes_field(&mut info, b"name");
    bytes_field(&mut info, name.as_bytes());
    bytes_field(&mut info, b"piece length");
    int_field(&mut info, piece);
    bytes_field(&mut info, b"pieces");
    bytes_field(&mut info, &pieces);
    info.push(b'e');
    let info_hash: [u8; 20] = sha1::Sha1::digest(&info).into();
    let mut bytes = b"d".to_vec();
    bytes_field(&mut bytes, b"announce");
    bytes_field(&mut bytes, announce.as_bytes());
    bytes_field(&mut bytes, b"info");
    bytes.extend_from_slice(&info);
    bytes.push(b'e');
    Ok(Torrent { bytes, info_hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths_stay_in_range() {
        assert_eq!(piece_len(1), PIECE_BYTES_MIN);
        assert_eq!(piece_len(128 << 20), PIECE_BYTES_MIN);
        assert_eq!(piece_len(1 << 30), 512 * 1024);
        assert_eq!(piece_len(1 << 40), PIECE_BYTES_MAX);
    }

    #[test]
    fn a_small_file_encodes_as_bep3_says() {
        let dir = std::env::temp_dir().join(format!("shoal-torrent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        std::fs::write(&path, b"abc").expect("write");
        let torrent = make(&path, "f", "http://t/announce").expect("torrent");
        let text = String::from_utf8_lossy(&torrent.bytes).into_owned();
        assert!(text.starts_with("d8:announce17:http://t/announce4:infod6:lengthi3e4:name1:f"));
        assert!(text.contains("12:piece lengthi262144e6:pieces20:"));
        assert!(text.ends_with("ee"));
        // The info hash is the SHA-1 of the info dictionary's exact bytes.
        let start =
            torrent.bytes.len() - (torrent.bytes.len() - text.find("d6:length").expect("info"));
        let info = &torrent.bytes[start..torrent.bytes.len() - 1];
        assert_eq!(
            torrent.info_hash,
            <[u8; 20]>::from(sha1::Sha1::digest(info))
        );
        assert_eq!(torrent.info_hash_hex().len(), 40);
        assert_eq!(torrent.info_hash_url().len(), 60);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
