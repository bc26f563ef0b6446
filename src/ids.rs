//! Random ids and numbers: client ids, payload and journal-segment ids, trace and span ids, the
//! sampling draw. One source (the OS, through `getrandom`) and one fallback for a system without
//! it (time, pid and a counter keep ids distinct between processes and calls).

use std::sync::atomic::{AtomicU64, Ordering};

fn fallback_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32)
}

/// Fills `bytes` with OS randomness, or with the fallback.
fn fill(bytes: &mut [u8]) {
    if getrandom::fill(bytes).is_err() {
        let seed = fallback_seed();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left((i as u32 * 8) % 64) & 0xff) as u8;
        }
    }
}

/// A random 64-bit number (client ids, the leader's host-metrics source id).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// `n` random bytes as lowercase hex (trace and span ids).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill(&mut bytes);
    let mut out = String::with_capacity(n * 2);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// A random 128-bit id in hex: payload ids and journal segment ids (unique, so that a receiver
/// can drop a payload sent twice).
pub fn new_payload_id() -> String {
    random_hex(16)
}

/// A uniformly random number in [0, 1) (the sampling draw).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_length_and_differ() {
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(random_hex(16), random_hex(16));
        assert_eq!(new_payload_id().len(), 32);
        assert_ne!(random_u64(), random_u64());
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
