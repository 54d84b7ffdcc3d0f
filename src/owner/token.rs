//! Tokens, one per acquisition, and the small hashes that tag names.

use std::io;
use std::sync::{Mutex, PoisonError};

use super::liveness::host_tag;

/// A new token: 32 lower-case hex digits, unique for as long as records
/// live: this machine's [`host_tag`] (8 digits), the creating process's
/// PID (8), and 64 bits derived from a per-process random key and a
/// counter (16).
///
/// The first half tells who made any artifact named after the token (a
/// claim, a record file) even when the artifact is empty, so that what a
/// killed process left can be told from what a live one is writing.
/// The random key is drawn from the OS once per process (again after a
/// `fork`, seen as a change of PID); the counter goes through a bijective
/// mix, so no two tokens of one process are equal, and tokens of two
/// processes differ in their PID or, across restarts that reuse a PID,
/// collide only as two random keys would. Tokens are not secrets (every
/// reader of a lock sees them); this saves a `getrandom` call per
/// acquisition.
pub(crate) fn new_token() -> io::Result<String> {
    struct Source {
        pid: u32,
        key: [u64; 2],
        counter: u64,
    }
    static SOURCE: Mutex<Option<Source>> = Mutex::new(None);
    let pid = crate::sys::pid();
    let (hi, lo) = {
        let mut source = SOURCE.lock().unwrap_or_else(PoisonError::into_inner);
        let source = match source.as_mut() {
            Some(s) if s.pid == pid => s,
            _ => {
                let mut raw = [0u8; 16];
                getrandom::fill(&mut raw).map_err(io::Error::other)?;
                let (a, b) = raw.split_at(8);
                let word = |half: &[u8]| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(half);
                    u64::from_le_bytes(bytes)
                };
                source.insert(Source {
                    pid,
                    key: [word(a), word(b)],
                    counter: 0,
                })
            }
        };
        source.counter = source.counter.wrapping_add(1);
        (
            u64::from(pid),
            mix(source.key[0].wrapping_add(source.counter) ^ source.key[1]),
        )
    };
    let mut token = String::with_capacity(32);
    token.push_str(&host_tag());
    for (word, digits) in [(hi, 8), (lo, 16)] {
        for shift in (0..digits).rev() {
            let digit = ((word >> (shift * 4)) & 0xf) as u8;
            token.push(char::from(b"0123456789abcdef"[usize::from(digit)]));
        }
    }
    Ok(token)
}

/// Whether `token` has the shape of the tokens portalock writes, so that it
/// can be part of a file name.
pub(crate) fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The process that made `token`, if it was made by a process of this
/// machine (see [`new_token`]): its PID.
pub(crate) fn token_maker(token: &str) -> Option<u32> {
    let (tag, rest) = (token.get(..8)?, token.get(8..16)?);
    if tag != host_tag() || token.len() != 32 {
        return None;
    }
    u32::from_str_radix(rest, 16).ok()
}

/// A bijection of `u64` that scatters its input (the splitmix64 finalizer).
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over `parts`, each followed by a zero byte: stable across
/// processes, platforms and versions, unlike std's hasher.
pub(super) fn fnv32(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parts
        .iter()
        .flat_map(|p| p.bytes().chain(std::iter::once(0)))
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// FNV-1a, 64 bits (see [`fnv32`]).
pub(crate) fn fnv64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts
        .iter()
        .flat_map(|p| p.bytes().chain(std::iter::once(0)))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
