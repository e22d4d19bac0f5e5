//! A fixed-length set of piece bits.
//!
//! On the wire a bitfield is `ceil(len / 8)` bytes, most significant bit first (bit 0 of the
//! set is the top bit of byte 0); the spare bits of the last byte must be zero.

/// Why bytes do not form a bitfield of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield of {len} bits needs {expected} bytes, got {actual}")]
    WrongByteLength {
        len: usize,
        expected: usize,
        actual: usize,
    },
    #[error("bitfield of {len} bits has spare bits set in its last byte")]
    SpareBitsSet { len: usize },
}

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    words: Vec<u64>,
    len: usize,
    n_ones: usize,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.n_ones, self.len)
    }
}

impl Bitfield {
    /// All bits clear.
    pub fn new(len: usize) -> Bitfield {
        Bitfield {
            words: vec![0; len.div_ceil(64)],
            len,
            n_ones: 0,
        }
    }

    /// All bits set.
    pub fn full(len: usize) -> Bitfield {
        let mut bits = Bitfield::new(len);
        for w in bits.words.iter_mut() {
            *w = u64::MAX;
        }
        if !len.is_multiple_of(64)
            && let Some(last) = bits.words.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        bits.n_ones = len;
        bits
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits (kept up to date, O(1)).
    pub fn count_ones(&self) -> usize {
        self.n_ones
    }

    pub fn is_full(&self) -> bool {
        self.n_ones == self.len
    }

    /// Panics if `index >= len`: an index from the network must be checked first.
    pub fn get(&self, index: usize) -> bool {
        assert!(index < self.len, "bit {index} of {}", self.len);
        self.words[index / 64] & (1u64 << (index % 64)) != 0
    }

    /// Sets a bit; returns whether it was clear before.
    pub fn set(&mut self, index: usize) -> bool {
        assert!(index < self.len, "bit {index} of {}", self.len);
        let word = &mut self.words[index / 64];
        let mask = 1u64 << (index % 64);
        let was_clear = *word & mask == 0;
        *word |= mask;
        self.n_ones += usize::from(was_clear);
        was_clear
    }

    /// Clears a bit; returns whether it was set before.
    pub fn clear(&mut self, index: usize) -> bool {
        assert!(index < self.len, "bit {index} of {}", self.len);
        let word = &mut self.words[index / 64];
        let mask = 1u64 << (index % 64);
        let was_set = *word & mask != 0;
        *word &= !mask;
        self.n_ones -= usize::from(was_set);
        was_set
    }

    /// Indexes of the set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }

    /// The bits as little-endian words: bit `i` is `words[i / 64] >> (i % 64) & 1`; the spare
    /// bits of the last word are zero.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Whether `other` has a bit set that `self` lacks. Lengths must match.
    pub fn lacks_any_of(&self, other: &Bitfield) -> bool {
        assert_eq!(self.len, other.len);
        self.words
            .iter()
            .zip(&other.words)
            .any(|(mine, theirs)| theirs & !mine != 0)
    }

    pub fn byte_len(len: usize) -> usize {
        len.div_ceil(8)
    }

    /// Wire form: MSB-first bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; Bitfield::byte_len(self.len)];
        self.write_bytes(&mut out);
        out
    }

    /// Writes the wire form into `out`, which must be exactly `byte_len(len)` long.
    pub fn write_bytes(&self, out: &mut [u8]) {
        assert_eq!(out.len(), Bitfield::byte_len(self.len));
        out.fill(0);
        for index in self.iter_ones() {
            out[index / 8] |= 0x80 >> (index % 8);
        }
    }

    /// Parses the wire form of a bitfield of `len` bits.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Bitfield, BitfieldError> {
        let expected = Bitfield::byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongByteLength {
                len,
                expected,
                actual: bytes.len(),
            });
        }
        if !len.is_multiple_of(8) {
            let spare_mask = 0xffu8 >> (len % 8);
            if bytes[expected - 1] & spare_mask != 0 {
                return Err(BitfieldError::SpareBitsSet { len });
            }
        }
        let mut bits = Bitfield::new(len);
        for (byte_index, &byte) in bytes.iter().enumerate() {
            let mut b = byte;
            while b != 0 {
                let offset = b.leading_zeros() as usize;
                bits.set(byte_index * 8 + offset);
                b &= !(0x80 >> offset);
            }
        }
        Ok(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 130] {
            let mut bits = Bitfield::new(len);
            for i in (0..len).step_by(3) {
                bits.set(i);
            }
            let bytes = bits.to_bytes();
            assert_eq!(bytes.len(), len.div_ceil(8));
            assert_eq!(Bitfield::from_bytes(&bytes, len).unwrap(), bits);
            assert_eq!(Bitfield::full(len).count_ones(), len);
            assert!(Bitfield::full(len).is_full());
        }
    }

    #[test]
    fn msb_first() {
        let mut bits = Bitfield::new(10);
        bits.set(0);
        bits.set(9);
        assert_eq!(bits.to_bytes(), vec![0x80, 0x40]);
    }

    #[test]
    fn rejects_bad_wire_forms() {
        assert_eq!(
            Bitfield::from_bytes(&[0, 0], 9),
            Ok(Bitfield::new(9)),
            "two bytes hold 9 bits"
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0], 9),
            Err(BitfieldError::WrongByteLength { .. })
        ));
        assert!(matches!(
            Bitfield::from_bytes(&[0, 0x01], 9),
            Err(BitfieldError::SpareBitsSet { len: 9 })
        ));
    }

    #[test]
    fn counts_follow_set_and_clear() {
        let mut bits = Bitfield::new(100);
        assert!(bits.set(5));
        assert!(!bits.set(5));
        assert_eq!(bits.count_ones(), 1);
        assert!(bits.clear(5));
        assert!(!bits.clear(5));
        assert_eq!(bits.count_ones(), 0);
        let full = Bitfield::full(100);
        assert!(bits.lacks_any_of(&full));
        assert!(!full.lacks_any_of(&bits));
        assert_eq!(full.iter_ones().count(), 100);
    }
}
