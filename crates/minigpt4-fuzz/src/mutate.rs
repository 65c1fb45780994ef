//! Byte-level mutations, as AFL and libFuzzer make them: bit flips, interesting values written
//! over integers, chunks inserted, removed, duplicated, cut, and two inputs spliced.

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

use crate::build::interesting;

/// `input` with 1 to 8 mutations; `other` is spliced in sometimes.
pub fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let len = out.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0, 1, 0x7f, 0x80, 0xff, b'(', b'.', b'\n'][rng.random_range(0..8)];
            }
            2 if len >= 8 => {
                // An integer field (u32 or u64, little endian) set to an edge value.
                let width = if rng.random_bool(0.5) { 4 } else { 8 };
                let i = rng.random_range(0..=len - width);
                out[i..i + width].copy_from_slice(&interesting(rng).to_le_bytes()[..width]);
            }
            3 => {
                let i = rng.random_range(0..=len);
                let mut chunk = vec![0u8; rng.random_range(1..32)];
                rng.fill_bytes(&mut chunk);
                out.splice(i..i, chunk);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                out.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(256));
                let chunk = out[i..i + n].to_vec();
                let at = rng.random_range(0..=len);
                out.splice(at..at, chunk);
            }
            6 if len > 0 => out.truncate(rng.random_range(0..len)),
            7 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                // A run of one byte (long zero or 0xff fields).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                let b = if rng.random_bool(0.5) { 0 } else { 0xff };
                out[i..i + n].fill(b);
            }
            _ => out.push(rng.random()),
        }
    }
    out
}
