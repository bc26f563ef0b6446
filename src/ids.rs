//! Random ids and numbers: client ids, payload and journal-segment ids, trace and span ids, the
//! sampling draw. One source (the OS, through `getrandom`) and one fallback for a system without
//! it (time, pid and a counter keep ids distinct between processes and calls). Also the one id that
//! is not random: the stable `service.instance.id` ([`service_instance_id`]).

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

/// The namespace the OpenTelemetry semantic conventions give for a UUID v5 `service.instance.id`.
const SERVICE_INSTANCE_NAMESPACE: [u8; 16] = [
    0x4d, 0x63, 0x00, 0x9a, 0x8d, 0x0f, 0x11, 0xee, 0xaa, 0xd7, 0x4c, 0x79, 0x6e, 0xd8, 0xe3, 0x20,
];

/// The `service.instance.id` of an app on a host: a UUID v5 (RFC 9562: SHA-1 of the namespace and
/// the name) in the semantic conventions' namespace, over the name `5:web-1,14:/tmp/appsignal,4:Shop,10:production,`:
/// host name, working directory, app name and environment, each as its length in bytes, `:`, its
/// bytes and `,` (so that no two different lists give one name). The same on every leader of one
/// working directory, different for two apps or two working directories on one host.
pub fn service_instance_id(host: &str, workdir: &std::path::Path, app: &str, env: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut data = SERVICE_INSTANCE_NAMESPACE.to_vec();
    for part in [
        host.as_bytes(),
        workdir.as_os_str().as_bytes(),
        app.as_bytes(),
        env.as_bytes(),
    ] {
        data.extend_from_slice(format!("{}:", part.len()).as_bytes());
        data.extend_from_slice(part);
        data.push(b',');
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &data);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out
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

    #[test]
    fn the_service_instance_id_is_a_uuid_v5_in_the_semantic_conventions_namespace() {
        // Python: uuid.uuid5(uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320"),
        //                    "5:web-1,25:/srv/app/shared/appsignal,4:Shop,10:production,")
        let dir = std::path::Path::new("/srv/app/shared/appsignal");
        assert_eq!(
            service_instance_id("web-1", dir, "Shop", "production"),
            "16e35a0d-ed2d-50c2-a4d5-1a27f6f4323c"
        );
        let tmp = std::path::Path::new("/tmp/appsignal");
        assert_eq!(
            service_instance_id("web-1", tmp, "Shop", "production"),
            "3352ed10-6ad0-57e3-be4a-5fcb5a78e118"
        );
        // Lengths keep the parts apart.
        assert_ne!(
            service_instance_id("a", dir, "b,c", "d"),
            service_instance_id("a", dir, "b", "c,d")
        );
    }
}
