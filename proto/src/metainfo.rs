//! Metainfo: piece length, per-piece SHA-256, stripes, canonical encoding, info hash.
//!
//! (To be completed.)
