//! Fuzzes the owner-record parser, `OwnerRecord::parse`.
//!
//! Properties checked for every input:
//!
//! - `parse` never panics (on any bytes: empty, oversized, non-UTF-8,
//!   malformed or truncated JSON, wrong types, unknown fields);
//! - a parsed record came from at most `MAX_RECORD_LEN` bytes;
//! - a parsed record has the current format version (`RECORD_VERSION`);
//! - a parsed record survives a round trip through `to_json`, whenever
//!   `to_json` fits the cap (it writes absent optional fields as `null`, so
//!   a record parsed from near the cap can serialize to a little more).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portalock::{OwnerRecord, MAX_RECORD_LEN, RECORD_VERSION};

fuzz_target!(|data: &[u8]| {
    let Some(rec) = OwnerRecord::parse(data) else {
        return;
    };
    assert!(
        data.len() <= MAX_RECORD_LEN,
        "parsed a record from {} bytes (> MAX_RECORD_LEN = {MAX_RECORD_LEN})",
        data.len()
    );
    assert_eq!(rec.v, RECORD_VERSION, "parsed a record of another version");
    let json = rec.to_json();
    if json.len() > MAX_RECORD_LEN {
        return;
    }
    let again = OwnerRecord::parse(json.as_bytes());
    assert_eq!(
        again.as_ref(),
        Some(&rec),
        "round trip through to_json failed; to_json gave {} bytes: {json}",
        json.len()
    );
});
