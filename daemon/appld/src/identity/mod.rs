//! Who is calling: a verified identity with its tenant and roles. Resolved once per request at
//! the edge ([`edge`], a tower layer on the router, for every face), put in the request's
//! extensions, and then only read: by the services, the request path and the audit records.
//!
//! Where an identity comes from, in this order:
//!
//! 1. a TLS client certificate that failed the site CA check refuses the request
//!    (`UNAUTHENTICATED`, naming why), and so does a missing one when `tls.client_certs` is
//!    `required`;
//! 2. an API key (`authorization: Bearer <key>`), looked up by its SHA-256 in `[[api_keys]]`;
//!    an unknown or disabled key is `UNAUTHENTICATED`, and nothing of the key is logged;
//! 3. a verified client certificate, mapped by subject CN or SAN through `[[identities]]`; an
//!    unmapped one is refused (`UNAUTHENTICATED`), never put in `default`;
//! 4. on the Unix socket, the peer's uid: root and members of `auth.admin_group` get
//!    `auth.local_admin_roles`, others `auth.local_roles`;
//! 5. otherwise (plaintext TCP, or TLS without a certificate when certificates are optional)
//!    the caller is `anonymous` with `auth.anonymous_roles`, or is refused when those are empty.
//!
//! The tenant comes from the identity. An `x-appl-tenant` header that names another tenant is
//! refused (`PERMISSION_DENIED`) unless the identity has the `gateway` role, and a gateway may
//! name only configured tenants.

pub mod config;
pub mod edge;
pub mod local;
pub mod roles;

use std::net::SocketAddr;
use std::sync::Arc;

use appl_audit::Ident;

use crate::request::RequestError;
use crate::tls::PeerCert;
pub use config::AuthTable;
pub use roles::{Access, Role, Roles};

/// The metadata key a gateway names the tenant of a request with.
pub const TENANT_HEADER: &str = "x-appl-tenant";
/// The metadata key that carries an API key (`Bearer <key>`).
pub const AUTHORIZATION: &str = "authorization";

/// What a connection proved about its peer, put on every request it carries.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// A Unix socket peer (SO_PEERCRED) and the groups its uid belongs to.
    Unix {
        uid: u32,
        gid: u32,
        groups: Arc<[u32]>,
    },
    /// A TLS connection and what its client certificate turned out to be.
    Tls(Arc<PeerCert>),
    /// Plaintext TCP (`tls.insecure_plaintext`).
    Plaintext,
}

/// How the caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Certificate,
    ApiKey,
    Unix,
    Anonymous,
}

/// Who is calling: the verified identity (recorded as the actor), its roles and its tenant.
#[derive(Debug, Clone)]
pub struct Caller {
    actor: Ident,
    roles: Roles,
    tenant: String,
    peer: Option<Ident>,
    via: Via,
}

impl Caller {
    /// The actor to record: `cert:<name>`, `key:<name>`, `uid:<n>` or `anonymous`.
    pub fn actor(&self) -> &Ident {
        &self.actor
    }

    /// The peer address (`127.0.0.1:5000`, `unix:uid=0,gid=0`), if known.
    pub fn peer(&self) -> Option<&Ident> {
        self.peer.as_ref()
    }

    /// The tenant the request belongs to (a configured tenant, or `default`).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn roles(&self) -> Roles {
        self.roles
    }

    pub fn via(&self) -> Via {
        self.via
    }

    /// The roles as the audit log's `roles` field holds them.
    pub fn roles_ident(&self) -> Option<Ident> {
        Ident::new(self.roles.joined()).ok()
    }

    /// The tenant as an audit identifier.
    pub fn tenant_ident(&self) -> Option<Ident> {
        Ident::new(self.tenant.as_str()).ok()
    }

    /// The caller the edge resolved for this request. Every service reads it from here; it
    /// is missing only if the edge layer was not installed, which is a bug.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Caller, RequestError> {
        Caller::from_extensions(req.extensions())
    }

    /// [`Caller::of`] for a plain HTTP request's extensions.
    pub fn from_extensions(ext: &http::Extensions) -> Result<Caller, RequestError> {
        ext.get::<Caller>().cloned().ok_or_else(|| {
            RequestError::Internal(
                "no caller was resolved for this request (edge layer missing)".into(),
            )
        })
    }

    #[cfg(test)]
    pub(crate) fn new_for_tests(actor: &str, tenant: &str, roles: Roles) -> Caller {
        Caller {
            actor: Ident::new(actor).unwrap_or_else(|_| anonymous()),
            roles,
            tenant: tenant.to_owned(),
            peer: None,
            via: Via::Anonymous,
        }
    }
}

fn anonymous() -> Ident {
    // A constant that is a valid identifier.
    Ident::new("anonymous").expect("`anonymous` is a valid identifier")
}

/// A refusal at the edge: the error the client gets, a stable reason for the audit record and
/// the log, and whom to record.
#[derive(Debug)]
pub struct Denial {
    /// Boxed: a refusal is the rare path, and it keeps every `Result` that may carry one small.
    pub error: Box<RequestError>,
    pub reason: &'static str,
    pub actor: Ident,
    pub roles: Roles,
    pub peer: Option<Ident>,
    /// Malformed input (a bad header) is refused but is not an authorization decision, so it
    /// is not recorded as `auth.denied`.
    pub audited: bool,
}

/// What a request presents, as the edge reads it off the connection and the metadata.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub conn: Option<&'a PeerAuth>,
    pub remote: Option<SocketAddr>,
    pub authorization: Option<&'a [u8]>,
    pub tenant: Option<&'a [u8]>,
    /// `tls.client_certs = "required"`.
    pub certs_required: bool,
}

/// Resolves the caller of a request (see the module docs for the order).
pub fn resolve(table: &AuthTable, p: &Presented<'_>) -> Result<Caller, Denial> {
    let peer = peer_ident(p);
    let deny = |error: RequestError, reason: &'static str, actor: Ident| Denial {
        error: Box::new(error),
        reason,
        actor,
        roles: Roles::NONE,
        peer: peer.clone(),
        audited: true,
    };
    if let Some(PeerAuth::Tls(cert)) = p.conn {
        match &**cert {
            PeerCert::Rejected {
                reason,
                why,
                subject,
            } => {
                let actor = subject
                    .as_deref()
                    .and_then(|s| Ident::new(format!("cert:{}", s.replace(' ', "_"))).ok())
                    .unwrap_or_else(anonymous);
                return Err(deny(
                    RequestError::Unauthenticated(why.clone()),
                    reason,
                    actor,
                ));
            }
            PeerCert::None if p.certs_required => {
                return Err(deny(
                    RequestError::Unauthenticated(
                        "this daemon requires a client certificate from the site CA \
                         (tls.client_certs = \"required\"); connect with --cert and --key"
                            .into(),
                    ),
                    "tls_no_certificate",
                    anonymous(),
                ));
            }
            _ => {}
        }
    }
    let (actor, roles, tenant, via) = if let Some(auth) = p.authorization {
        let key = bearer(auth).ok_or_else(|| {
            deny(
                RequestError::Unauthenticated(format!(
                    "the {AUTHORIZATION} metadata must be `Bearer <API key>`"
                )),
                "api_key_malformed",
                anonymous(),
            )
        })?;
        let Some(k) = table.api_key(key) else {
            return Err(deny(
                RequestError::Unauthenticated("the API key is not known to this daemon".into()),
                "api_key_unknown",
                anonymous(),
            ));
        };
        let actor = Ident::new(format!("key:{}", k.name)).unwrap_or_else(|_| anonymous());
        if !k.enabled {
            return Err(deny(
                RequestError::Unauthenticated(format!(
                    "API key {:?} is disabled (api_keys.enabled = false)",
                    k.name
                )),
                "api_key_disabled",
                actor,
            ));
        }
        (actor, k.roles, k.tenant.clone(), Via::ApiKey)
    } else {
        match p.conn {
            Some(PeerAuth::Tls(cert)) if matches!(**cert, PeerCert::Verified(_)) => {
                let PeerCert::Verified(info) = &**cert else {
                    unreachable!("matched as Verified just above")
                };
                match table.certificate(info.cn.as_deref(), &info.sans) {
                    Some(id) => (
                        Ident::new(format!("cert:{}", id.name)).unwrap_or_else(|_| anonymous()),
                        id.roles,
                        id.tenant.clone(),
                        Via::Certificate,
                    ),
                    None => {
                        let actor = info
                            .cn
                            .as_deref()
                            .and_then(|cn| Ident::new(format!("cert:{cn}")).ok())
                            .unwrap_or_else(|| {
                                Ident::new(format!("cert-sha256:{}", &info.sha256[..16]))
                                    .unwrap_or_else(|_| anonymous())
                            });
                        return Err(deny(
                            RequestError::Unauthenticated(format!(
                                "the client certificate ({}) is from the site CA but is not a \
                                 known identity; add it to [[identities]]",
                                info.subject
                            )),
                            "identity_unknown",
                            actor,
                        ));
                    }
                }
            }
            Some(PeerAuth::Unix { uid, groups, .. }) => {
                let admin = *uid == 0
                    || table
                        .admin_gid
                        .is_some_and(|g| groups.binary_search(&g).is_ok());
                let roles = if admin {
                    table.local_admin_roles
                } else {
                    table.local_roles
                };
                let actor = Ident::new(format!("uid:{uid}")).unwrap_or_else(|_| anonymous());
                (actor, roles, table.local_tenant.clone(), Via::Unix)
            }
            _ => {
                if table.anonymous_roles.is_empty() {
                    return Err(deny(
                        RequestError::Unauthenticated(
                            "no credentials: present a client certificate or an API key \
                             (authorization: Bearer <key>)"
                                .into(),
                        ),
                        "no_credentials",
                        anonymous(),
                    ));
                }
                (
                    anonymous(),
                    table.anonymous_roles,
                    table.anonymous_tenant.clone(),
                    Via::Anonymous,
                )
            }
        }
    };
    let mut caller = Caller {
        actor,
        roles,
        tenant,
        peer,
        via,
    };
    if let Some(raw) = p.tenant {
        let named = parse_tenant(raw).map_err(|error| Denial {
            error: Box::new(error),
            reason: "tenant_header_invalid",
            actor: caller.actor.clone(),
            roles: caller.roles,
            peer: caller.peer.clone(),
            audited: false,
        })?;
        if named.as_str() != caller.tenant {
            let refuse = |why: String, reason| Denial {
                error: Box::new(RequestError::PermissionDenied(why)),
                reason,
                actor: caller.actor.clone(),
                roles: caller.roles,
                peer: caller.peer.clone(),
                audited: true,
            };
            if !caller.roles.contains(Role::Gateway) {
                return Err(refuse(
                    format!(
                        "{TENANT_HEADER} names tenant {named} but this identity belongs to \
                         tenant {}; only an identity with the gateway role may name another \
                         tenant",
                        caller.tenant
                    ),
                    "tenant_mismatch",
                ));
            }
            if !table.tenant_exists(named.as_str()) {
                return Err(refuse(
                    format!("{TENANT_HEADER} names tenant {named}, which is not configured"),
                    "tenant_unknown",
                ));
            }
            caller.tenant = named.as_str().to_owned();
        }
    }
    Ok(caller)
}

/// Refuses a resolved caller that lacks what the service needs.
pub fn authorize(caller: &Caller, access: Access, path: &str) -> Result<(), Denial> {
    let ok = match access {
        Access::Anyone => true,
        Access::Authenticated => !caller.roles.is_empty(),
        Access::Role(r) => caller.roles.contains(r),
    };
    if ok {
        return Ok(());
    }
    let (why, reason) = match access {
        Access::Role(r) => (
            format!(
                "{path} needs the {r} role; {} has {}",
                caller.actor,
                caller.roles.joined()
            ),
            role_reason(r),
        ),
        _ => (
            format!(
                "{path} needs an identity with a role; {} has none",
                caller.actor
            ),
            "role_required_any",
        ),
    };
    Err(Denial {
        error: Box::new(RequestError::PermissionDenied(why)),
        reason,
        actor: caller.actor.clone(),
        roles: caller.roles,
        peer: caller.peer.clone(),
        audited: true,
    })
}

fn role_reason(r: Role) -> &'static str {
    match r {
        Role::Inference => "role_required_inference",
        Role::Operator => "role_required_operator",
        Role::Auditor => "role_required_auditor",
        Role::Gateway => "role_required_gateway",
    }
}

/// A caller for a request whose credentials failed, where the service lets anyone in
/// (health): anonymous, without roles.
pub fn anonymous_caller(p: &Presented<'_>) -> Caller {
    Caller {
        actor: anonymous(),
        roles: Roles::NONE,
        tenant: crate::tenants::DEFAULT_TENANT.to_owned(),
        peer: peer_ident(p),
        via: Via::Anonymous,
    }
}

fn peer_ident(p: &Presented<'_>) -> Option<Ident> {
    if let Some(a) = p.remote {
        return Some(Ident::from(a));
    }
    match p.conn {
        Some(PeerAuth::Unix { uid, gid, .. }) => {
            Ident::new(format!("unix:uid={uid},gid={gid}")).ok()
        }
        _ => None,
    }
}

/// The key of `Bearer <key>` (the scheme is case-insensitive, as in RFC 7235).
fn bearer(raw: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let (scheme, key) = s.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The tenant named in a request header: trimmed of surrounding white space, and a valid audit
/// identifier (it is recorded).
fn parse_tenant(raw: &[u8]) -> Result<Ident, RequestError> {
    let s = std::str::from_utf8(raw)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| RequestError::Invalid(format!("{TENANT_HEADER} metadata is not ASCII")))?;
    Ident::new(s.trim()).map_err(|e| {
        RequestError::Invalid(format!(
            "{TENANT_HEADER} metadata is not a valid identifier ({e}); use 1-256 of letters, \
             digits and ._-:@/=,+[]#"
        ))
    })
}

#[cfg(test)]
mod tests;
