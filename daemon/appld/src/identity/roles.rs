//! Roles, and the one table that says which role each gRPC service needs.
//!
//! A new method on an existing service needs nothing here: every `appl.v1.Admin` method,
//! present or future, is operator-only because the service is. A new service must be added to
//! [`ACCESS`]; until it is, it needs an authenticated caller with some role, and nothing more.

use std::fmt;

use serde::Deserialize;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Generate, Chat, Tokenize, ListModels.
    Inference,
    /// `appl.v1.Admin`: Status and every admin action.
    Operator,
    /// `appl.v1.Audit`: Tail, Export, VerifyStore.
    Auditor,
    /// May name another tenant in `x-appl-tenant` (an API gateway that serves many tenants).
    Gateway,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Inference,
        Role::Operator,
        Role::Auditor,
        Role::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Inference => "inference",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Gateway => "gateway",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The role as the audit log records it (`gateway` is recorded only in `roles`).
    pub fn audit(self) -> appl_audit::Role {
        match self {
            Role::Inference | Role::Gateway => appl_audit::Role::Inference,
            Role::Operator => appl_audit::Role::Operator,
            Role::Auditor => appl_audit::Role::Auditor,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub fn contains(self, r: Role) -> bool {
        self.0 & r.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// `inference+operator`, as the audit log's `roles` field holds it; `none` when empty.
    pub fn joined(self) -> String {
        if self.is_empty() {
            return "none".to_owned();
        }
        self.iter().map(Role::name).collect::<Vec<_>>().join("+")
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(it: I) -> Self {
        Roles(it.into_iter().fold(0, |acc, r| acc | r.bit()))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined())
    }
}

/// Who may call a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, even a caller whose credentials failed: health checks from load balancers.
    Anyone,
    /// Any caller with a resolved identity and at least one role (server reflection).
    Authenticated,
    /// Callers holding this role.
    Role(Role),
}

/// The one table of who may call what, by gRPC service. Services not listed are
/// [`Access::Authenticated`].
pub const ACCESS: &[(&str, Access)] = &[
    ("appl.v1.Inference", Access::Role(Role::Inference)),
    ("appl.v1.Admin", Access::Role(Role::Operator)),
    ("appl.v1.Audit", Access::Role(Role::Auditor)),
    // Load balancers and systemd-style probes must see health without credentials; it tells
    // only SERVING or NOT_SERVING.
    ("grpc.health.v1.Health", Access::Anyone),
    // The API's shape is no secret, but there is no reason to show it to strangers.
    ("grpc.reflection.v1.ServerReflection", Access::Authenticated),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        Access::Authenticated,
    ),
];

/// Who may call what on the OpenAI-compatible HTTP listener, by exact path or, ending in `/`,
/// by prefix; paths not listed
/// are [`Access::Authenticated`] (and answered 404 by the router).
pub const HTTP_ACCESS: &[(&str, Access)] = &[
    ("/v1/", Access::Role(Role::Inference)),
    // Load balancers probe it without credentials; it tells only serving or not.
    ("/health", Access::Anyone),
    // Prometheus scrapes without credentials, as on `server.metrics_listen`.
    ("/metrics", Access::Anyone),
];

/// Who may call `path` on the OpenAI-compatible HTTP listener.
pub fn http_access(path: &str) -> Access {
    HTTP_ACCESS
        .iter()
        .find(|(p, _)| match p.strip_suffix('/') {
            Some(_) => path.starts_with(p),
            None => path == *p,
        })
        .map_or(Access::Authenticated, |(_, a)| *a)
}

/// `Admin` methods that only read: not recorded in the audit log on every call (monitoring
/// polls them). Every other `Admin` method is an action, recorded as `admin.<method>`.
pub const ADMIN_READS: &[&str] = &["Status"];

/// The gRPC service and method of a request path (`/appl.v1.Admin/Status`).
pub fn split_path(path: &str) -> (&str, &str) {
    let p = path.strip_prefix('/').unwrap_or(path);
    p.split_once('/').unwrap_or((p, ""))
}

/// Who may call the service of `path`.
pub fn access(path: &str) -> Access {
    let (service, _) = split_path(path);
    ACCESS
        .iter()
        .find(|(s, _)| *s == service)
        .map_or(Access::Authenticated, |(_, a)| *a)
}

/// `StartDrain` -> `start_drain`: the op of an `admin.<op>` audit action.
pub fn admin_op(method: &str) -> String {
    let mut out = String::with_capacity(method.len() + 4);
    for (i, c) in method.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_needs_its_role_and_new_admin_methods_are_operator_only() {
        let cases = [
            ("/appl.v1.Inference/Generate", Access::Role(Role::Inference)),
            (
                "/appl.v1.Inference/ListModels",
                Access::Role(Role::Inference),
            ),
            ("/appl.v1.Admin/Status", Access::Role(Role::Operator)),
            ("/appl.v1.Admin/LoadModel", Access::Role(Role::Operator)),
            ("/appl.v1.Audit/Export", Access::Role(Role::Auditor)),
            ("/grpc.health.v1.Health/Check", Access::Anyone),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                Access::Authenticated,
            ),
            ("/appl.v2.Unknown/Thing", Access::Authenticated),
            ("garbage", Access::Authenticated),
        ];
        for (path, want) in cases {
            assert_eq!(access(path), want, "{path}");
        }
    }

    #[test]
    fn the_http_api_needs_the_inference_role_and_health_is_open() {
        for (path, want) in [
            ("/v1/chat/completions", Access::Role(Role::Inference)),
            ("/v1/completions", Access::Role(Role::Inference)),
            ("/v1/models", Access::Role(Role::Inference)),
            ("/health", Access::Anyone),
            ("/metrics", Access::Anyone),
            ("/healthz", Access::Authenticated),
            ("/v2/anything", Access::Authenticated),
        ] {
            assert_eq!(http_access(path), want, "{path}");
        }
    }

    #[test]
    fn roles_join_in_a_stable_order() {
        let r: Roles = [Role::Gateway, Role::Inference].into_iter().collect();
        assert_eq!(r.joined(), "inference+gateway");
        assert!(r.contains(Role::Gateway) && !r.contains(Role::Operator));
        assert_eq!(Roles::NONE.joined(), "none");
        assert!(appl_audit::Ident::new(Roles::from_iter(Role::ALL).joined()).is_ok());
    }

    #[test]
    fn admin_ops_are_audit_action_names() {
        for (m, op) in [
            ("Status", "status"),
            ("LoadModel", "load_model"),
            ("StartDrain", "start_drain"),
        ] {
            assert_eq!(admin_op(m), op);
            assert!(appl_audit::Action::admin(op).is_ok());
        }
    }
}
