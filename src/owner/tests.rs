//! Unit tests of records, tokens and liveness.

use super::liveness::host_tag;
use super::*;

#[test]
fn boot_times_a_second_apart_are_one_boot() {
    assert!(same_boot(Some("boot-time:1000"), Some("boot-time:1001")));
    assert!(same_boot(Some("boot-time:1000"), Some("boot-time:998")));
    assert!(!same_boot(Some("boot-time:1000"), Some("boot-time:1010")));
    assert!(same_boot(Some("abc"), Some("abc")));
    assert!(!same_boot(Some("abc"), Some("abd")));
    assert!(!same_boot(Some("boot-time:1"), None));
    assert!(same_boot(None, None));
}

#[test]
fn tokens_are_distinct_hex() {
    let tokens: std::collections::HashSet<String> =
        (0..20_000).map(|_| new_token().expect("token")).collect();
    assert_eq!(tokens.len(), 20_000);
    assert!(tokens.iter().all(|t| t.len() == 32
        && t.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
}

#[test]
fn a_token_names_its_maker() {
    let token = new_token().expect("token");
    assert_eq!(token_maker(&token), Some(std::process::id()));
    assert_eq!(
        token_maker(&"0".repeat(32)).is_some(),
        host_tag() == "00000000"
    );
}

#[test]
fn a_record_never_names_auto() {
    let record = OwnerRecord::for_this_process(Mechanism::Mkdir).expect("record");
    let json = record.to_json();
    assert!(OwnerRecord::parse(json.as_bytes()).is_some());
    let auto = json.replace(r#""strategy":"mkdir""#, r#""strategy":"auto""#);
    assert_ne!(auto, json);
    assert_eq!(OwnerRecord::parse(auto.as_bytes()), None);
}

#[test]
fn round_trip() {
    let rec = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    assert_eq!(rec.token.len(), 32);
    assert_eq!(rec.pid, std::process::id());
    assert!(rec.start.is_some(), "own start time is known");
    let parsed = OwnerRecord::parse(rec.to_json().as_bytes()).expect("parses");
    assert_eq!(parsed, rec);
}

#[test]
fn tokens_differ() {
    let a = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
    let b = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
    assert_ne!(a.token, b.token);
}

#[test]
fn trailing_whitespace_is_accepted() {
    let rec = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
    let padded = format!("{}\n      ", rec.to_json());
    assert_eq!(OwnerRecord::parse(padded.as_bytes()), Some(rec));
}

#[test]
fn acquired_at_is_a_time_written_as_rfc3339() {
    let mut rec = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    let json = rec.to_json();
    let at = humantime::format_rfc3339_seconds(rec.acquired_at).to_string();
    assert!(json.contains(&format!(r#""acquired_at":"{at}""#)), "{json}");
    // A fraction (a record from another writer) survives a round trip.
    let fraction = json.replace(&at, &at.replace('Z', ".25Z"));
    let parsed = OwnerRecord::parse(fraction.as_bytes()).expect("parses");
    assert_eq!(
        parsed.acquired_at,
        rec.acquired_at + Duration::from_millis(250)
    );
    assert_eq!(
        OwnerRecord::parse(parsed.to_json().as_bytes()),
        Some(parsed)
    );
    // A time this version cannot read is the epoch, not a record lost: a
    // record that did not parse would be judged as none (a live Mkdir
    // holder's lock broken after the grace period, a dead Link holder's
    // never).
    for odd in [
        "yesterday",
        "2026-11-22T10:00:00+01:00",
        "2026-13-01T00:00:00Z",
    ] {
        let odd = json.replace(&at, odd);
        let parsed = OwnerRecord::parse(odd.as_bytes()).expect("a record");
        assert_eq!(parsed.acquired_at, SystemTime::UNIX_EPOCH, "{odd}");
        assert_eq!((parsed.pid, &parsed.token), (rec.pid, &rec.token));
    }
    // Not a string: not a record of this version.
    let number = json.replace(&format!("\"{at}\""), "1795411051");
    assert_eq!(OwnerRecord::parse(number.as_bytes()), None, "{number}");
    // Times RFC 3339 cannot write are clamped, not a panic.
    rec.acquired_at = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
    assert!(rec.to_json().contains("1970-01-01T00:00:00Z"));
    rec.acquired_at = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
    assert!(rec.to_json().contains("9999-12-31T23:59:59Z"));
}
