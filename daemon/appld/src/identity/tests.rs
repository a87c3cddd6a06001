//! Identity resolution, case by case: every way in, every refusal and its code and reason.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::Code;

use super::config::{key_digest, ApiKeyConfig, AuthSettings, IdentityConfig};
use super::*;
use crate::tenants::TenantConfig;
use crate::tls::CertInfo;

fn table() -> AuthTable {
    let tenants: Vec<TenantConfig> = ["ward-a", "ward-b"]
        .iter()
        .map(|n| toml::from_str(&format!("name = \"{n}\"")).expect("tenant"))
        .collect();
    let ids = vec![
        IdentityConfig {
            cn: "ward-a-app".into(),
            san: String::new(),
            name: String::new(),
            tenant: "ward-a".into(),
            roles: vec![Role::Inference],
        },
        IdentityConfig {
            cn: String::new(),
            san: "gateway.example.org".into(),
            name: "gw".into(),
            tenant: "default".into(),
            roles: vec![Role::Inference, Role::Gateway],
        },
    ];
    let keys = vec![
        ApiKeyConfig {
            name: "batch-job".into(),
            sha256: hex::encode(key_digest("appl_good")),
            tenant: "ward-b".into(),
            roles: vec![Role::Inference],
            enabled: true,
        },
        ApiKeyConfig {
            name: "old".into(),
            sha256: hex::encode(key_digest("appl_revoked")),
            tenant: "ward-b".into(),
            roles: vec![Role::Inference],
            enabled: false,
        },
    ];
    let auth = AuthSettings {
        admin_group: "root".into(),
        ..Default::default()
    };
    let mut t = AuthTable::new(&auth, &ids, &keys, &tenants);
    t.certs_required = true;
    t
}

fn cert(cn: &str, sans: &[&str]) -> PeerAuth {
    PeerAuth::Tls(Arc::new(PeerCert::Verified(CertInfo {
        subject: format!("CN={cn}"),
        cn: Some(cn.to_owned()),
        sans: sans.iter().map(|s| (*s).to_owned()).collect(),
        not_after: SystemTime::now(),
        sha256: "ab".repeat(32),
    })))
}

fn unix(uid: u32, groups: &[u32]) -> PeerAuth {
    PeerAuth::Unix {
        uid,
        gid: groups.first().copied().unwrap_or(uid),
        groups: groups.to_vec().into(),
    }
}

struct Case {
    what: &'static str,
    conn: PeerAuth,
    auth: Option<&'static str>,
    tenant: Option<&'static str>,
    /// Ok((actor, tenant, roles)) or Err((code, reason)).
    want: Result<(&'static str, &'static str, &'static str), (Code, &'static str)>,
}

#[test]
fn callers_are_resolved_or_refused_with_the_right_code() {
    let t = table();
    let rejected = PeerAuth::Tls(Arc::new(PeerCert::Rejected {
        reason: "tls_cert_expired",
        why: "expired".into(),
        subject: Some("CN=old app".into()),
    }));
    let no_cert = PeerAuth::Tls(Arc::new(PeerCert::None));
    let cases = vec![
        Case {
            what: "mapped cert",
            conn: cert("ward-a-app", &[]),
            auth: None,
            tenant: None,
            want: Ok(("cert:ward-a-app", "ward-a", "inference")),
        },
        Case {
            what: "cert naming its own tenant",
            conn: cert("ward-a-app", &[]),
            auth: None,
            tenant: Some("ward-a"),
            want: Ok(("cert:ward-a-app", "ward-a", "inference")),
        },
        Case {
            what: "forged tenant",
            conn: cert("ward-a-app", &[]),
            auth: None,
            tenant: Some("ward-b"),
            want: Err((Code::PermissionDenied, "tenant_mismatch")),
        },
        Case {
            what: "gateway names a tenant",
            conn: cert("x", &["gateway.example.org"]),
            auth: None,
            tenant: Some("ward-b"),
            want: Ok(("cert:gw", "ward-b", "inference+gateway")),
        },
        Case {
            what: "gateway names an unknown tenant",
            conn: cert("x", &["gateway.example.org"]),
            auth: None,
            tenant: Some("ward-z"),
            want: Err((Code::PermissionDenied, "tenant_unknown")),
        },
        Case {
            what: "malformed tenant",
            conn: cert("ward-a-app", &[]),
            auth: None,
            tenant: Some("two words"),
            want: Err((Code::InvalidArgument, "tenant_header_invalid")),
        },
        Case {
            what: "unmapped cert",
            conn: cert("stranger", &[]),
            auth: None,
            tenant: None,
            want: Err((Code::Unauthenticated, "identity_unknown")),
        },
        Case {
            what: "rejected cert",
            conn: rejected.clone(),
            auth: None,
            tenant: None,
            want: Err((Code::Unauthenticated, "tls_cert_expired")),
        },
        Case {
            what: "rejected cert with a good key",
            conn: rejected,
            auth: Some("Bearer appl_good"),
            tenant: None,
            want: Err((Code::Unauthenticated, "tls_cert_expired")),
        },
        Case {
            what: "no cert when required",
            conn: no_cert.clone(),
            auth: Some("Bearer appl_good"),
            tenant: None,
            want: Err((Code::Unauthenticated, "tls_no_certificate")),
        },
        Case {
            what: "key on the socket",
            conn: unix(1000, &[1000]),
            auth: Some("Bearer appl_good"),
            tenant: None,
            want: Ok(("key:batch-job", "ward-b", "inference")),
        },
        Case {
            what: "bearer scheme is case-insensitive",
            conn: unix(1000, &[1000]),
            auth: Some("bearer  appl_good "),
            tenant: None,
            want: Ok(("key:batch-job", "ward-b", "inference")),
        },
        Case {
            what: "unknown key",
            conn: unix(1000, &[1000]),
            auth: Some("Bearer appl_bad"),
            tenant: None,
            want: Err((Code::Unauthenticated, "api_key_unknown")),
        },
        Case {
            what: "revoked key",
            conn: unix(1000, &[1000]),
            auth: Some("Bearer appl_revoked"),
            tenant: None,
            want: Err((Code::Unauthenticated, "api_key_disabled")),
        },
        Case {
            what: "not bearer",
            conn: unix(1000, &[1000]),
            auth: Some("Basic dXNlcjpwdw=="),
            tenant: None,
            want: Err((Code::Unauthenticated, "api_key_malformed")),
        },
        Case {
            what: "root on the socket",
            conn: unix(0, &[0]),
            auth: None,
            tenant: None,
            want: Ok(("uid:0", "default", "inference+operator+auditor+gateway")),
        },
        Case {
            what: "admin group member",
            conn: unix(1000, &[0, 1000]),
            auth: None,
            tenant: Some("ward-a"),
            want: Ok(("uid:1000", "ward-a", "inference+operator+auditor+gateway")),
        },
        Case {
            what: "other local user",
            conn: unix(1000, &[1000]),
            auth: None,
            tenant: None,
            want: Ok(("uid:1000", "default", "inference")),
        },
        Case {
            what: "other local user names a tenant",
            conn: unix(1000, &[1000]),
            auth: None,
            tenant: Some("ward-a"),
            want: Err((Code::PermissionDenied, "tenant_mismatch")),
        },
        Case {
            what: "plaintext without anonymous roles",
            conn: PeerAuth::Plaintext,
            auth: None,
            tenant: None,
            want: Err((Code::Unauthenticated, "no_credentials")),
        },
    ];
    for c in cases {
        let p = Presented {
            conn: Some(&c.conn),
            remote: None,
            authorization: c.auth.map(str::as_bytes),
            tenant: c.tenant.map(str::as_bytes),
            certs_required: t.certs_required,
        };
        match (resolve(&t, &p), c.want) {
            (Ok(caller), Ok((actor, tenant, roles))) => {
                assert_eq!(
                    (
                        caller.actor().as_str(),
                        caller.tenant(),
                        caller.roles().joined().as_str()
                    ),
                    (actor, tenant, roles),
                    "{}",
                    c.what
                );
            }
            (Err(d), Err((code, reason))) => {
                assert_eq!(
                    (d.error.code(), d.reason),
                    (code, reason),
                    "{}: {}",
                    c.what,
                    d.error
                );
                assert!(
                    !d.error.to_string().contains("appl_"),
                    "{}: the key leaks: {}",
                    c.what,
                    d.error
                );
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", c.what),
        }
    }
}

#[test]
fn anonymous_roles_let_plaintext_callers_in_when_configured() {
    let mut t = table();
    t.anonymous_roles = [Role::Inference].into_iter().collect();
    let conn = PeerAuth::Plaintext;
    let p = Presented {
        conn: Some(&conn),
        remote: Some("127.0.0.1:4000".parse().expect("addr")),
        authorization: None,
        tenant: None,
        certs_required: false,
    };
    let c = resolve(&t, &p).expect("anonymous inference");
    assert_eq!(c.actor().as_str(), "anonymous");
    assert_eq!(c.peer().map(Ident::as_str), Some("127.0.0.1:4000"));
    assert_eq!(c.via(), Via::Anonymous);
}

#[test]
fn roles_decide_access_per_service() {
    let infer = Caller::new_for_tests("cert:a", "default", [Role::Inference].into_iter().collect());
    let none = Caller::new_for_tests("anonymous", "default", Roles::NONE);
    for (caller, path, ok) in [
        (&infer, "/appl.v1.Inference/Generate", true),
        (&infer, "/appl.v1.Admin/Status", false),
        (&infer, "/appl.v1.Audit/Export", false),
        (
            &infer,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            true,
        ),
        (&none, "/grpc.health.v1.Health/Check", true),
        (
            &none,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            false,
        ),
    ] {
        let r = authorize(caller, roles::access(path), path);
        assert_eq!(r.is_ok(), ok, "{} on {path}", caller.actor());
        if let Err(d) = r {
            assert_eq!(d.error.code(), Code::PermissionDenied);
        }
    }
    let d = authorize(
        &infer,
        roles::access("/appl.v1.Admin/LoadModel"),
        "/appl.v1.Admin/LoadModel",
    )
    .expect_err("operator only");
    assert_eq!(d.reason, "role_required_operator");
}
