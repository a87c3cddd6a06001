//! The record encoding: canonical form, flat form, identifiers, actions, timestamps.
use super::*;

fn sample() -> Record {
    let mut n = NewRecord::new(
        Action::InferenceGenerate,
        Phase::Completed,
        Ident::new("CN=client1,O=Acme").unwrap(),
        Role::Inference,
    );
    n.peer = Some(Ident::from("[::1]:5000".parse::<SocketAddr>().unwrap()));
    n.request_id = Some(Ident::new("req-1").unwrap());
    n.status = Some(0);
    n.prompt_tokens = Some(12);
    n.model_sha256 = Some(Digest([7; 32]));
    Record::from_new(
        n,
        42,
        Timestamp {
            unix_micros: 1_700_000_000_123_456,
        },
    )
}

#[test]
fn canonical_round_trip_and_strictness() {
    let r = sample();
    let b = r.canonical_bytes();
    assert_eq!(
        String::from_utf8(b.clone()).unwrap(),
        r#"{"v":1,"seq":42,"ts":"2023-11-14T22:13:20.123456Z","actor":"CN=client1,O=Acme","role":"inference","peer":"[::1]:5000","action":"inference.generate","phase":"completed","request_id":"req-1","model_sha256":"0707070707070707070707070707070707070707070707070707070707070707","status":0,"prompt_tokens":12}"#
    );
    assert_eq!(Record::from_canonical(&b).unwrap(), r);
    // Same content, other spelling: rejected.
    let spaced = String::from_utf8(b)
        .unwrap()
        .replace(",\"seq\"", ", \"seq\"");
    assert!(Record::from_canonical(spaced.as_bytes()).is_err());
    let upper = r.canonical_bytes();
    let upper = String::from_utf8(upper).unwrap().replace("0707", "07A7");
    assert!(Record::from_canonical(upper.as_bytes()).is_err());
}

#[test]
fn flat_round_trip() {
    let r = sample();
    let flat = r.flat();
    assert_eq!(flat.len(), FIELDS.len());
    let pairs: Vec<(&str, &str)> = flat
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    assert_eq!(Record::from_flat(pairs).unwrap(), r);
    assert!(Record::from_flat([("bogus", "1")]).is_err());
    assert!(Record::from_flat([("seq", "-1")]).is_err());
}

#[test]
fn ident_rejects_text() {
    for bad in [
        "",
        "patient has diabetes",
        "a\nb",
        "tab\there",
        "ünïcode",
        "quote\"",
    ] {
        assert!(Ident::new(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Ident::new("x".repeat(IDENT_MAX + 1)).is_err());
    for good in [
        "system",
        "uid:1000",
        "CN=a,O=b",
        "10.0.0.1:443",
        "sha256:abcd",
    ] {
        assert!(Ident::new(good).is_ok(), "{good:?} rejected");
    }
}

#[test]
fn actions_round_trip() {
    for a in [
        Action::InferenceGenerate,
        Action::InferenceChat,
        Action::InferenceTokenize,
        Action::AuthDenied,
        Action::DaemonStart,
        Action::DaemonStop,
        Action::ConfigReload,
        Action::AuditExport,
        Action::ModelLoad,
        Action::admin("drain").unwrap(),
    ] {
        assert_eq!(a.name().parse::<Action>().unwrap(), a);
    }
    assert!("admin.Drain Now".parse::<Action>().is_err());
    assert!("inference.other".parse::<Action>().is_err());
}

#[test]
fn timestamps() {
    let t = Timestamp::parse_rfc3339("2024-02-29T23:59:59.5+01:00").unwrap();
    assert_eq!(t.to_string(), "2024-02-29T22:59:59.500000Z");
    assert_eq!(Timestamp::parse_canonical(&t.to_string()).unwrap(), t);
    assert!(Timestamp::parse_canonical("2024-02-29T22:59:59.5Z").is_err());
    let now = SystemTime::now();
    let back = Timestamp::from_system(now).to_system();
    assert!(now.duration_since(back).unwrap() < Duration::from_micros(1));
}
