//! The identity settings (`[auth]`, `[[identities]]`, `[[api_keys]]`) and the table built from
//! them ([`AuthTable`]), which SIGHUP replaces as a whole.
//!
//! API keys are stored as SHA-256 digests only. A key is 32 random bytes (`applctl keys new`),
//! so a fast hash is enough: there is nothing to guess.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::roles::{Role, Roles};
use crate::tenants::{TenantConfig, DEFAULT_TENANT};

/// `[auth]`: who the Unix socket's peers are, and what callers without credentials may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// On the Unix socket, root and members of this group (primary or supplementary, from the
    /// group database) get `local_admin_roles`.
    pub admin_group: String,
    /// Roles of root and `admin_group` members on the Unix socket.
    pub local_admin_roles: Vec<Role>,
    /// Roles of every other local user that can open the socket (its mode and group decide
    /// who can).
    pub local_roles: Vec<Role>,
    /// The tenant of Unix socket callers.
    pub local_tenant: String,
    /// Roles of TCP callers with no client certificate and no API key. Only reachable with
    /// `tls.insecure_plaintext` or `tls.client_certs = "optional"`; empty refuses them
    /// (UNAUTHENTICATED).
    pub anonymous_roles: Vec<Role>,
    /// The tenant of such callers.
    pub anonymous_tenant: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            admin_group: "appl-admin".to_owned(),
            local_admin_roles: vec![
                Role::Operator,
                Role::Auditor,
                Role::Inference,
                Role::Gateway,
            ],
            local_roles: vec![Role::Inference],
            local_tenant: DEFAULT_TENANT.to_owned(),
            anonymous_roles: Vec::new(),
            anonymous_tenant: DEFAULT_TENANT.to_owned(),
        }
    }
}

/// One `[[identities]]` entry: a client certificate, matched by its subject CN or one of its
/// subject alternative names, mapped to a tenant and roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The certificate's subject common name.
    #[serde(default)]
    pub cn: String,
    /// A DNS, e-mail or URI subject alternative name of the certificate.
    #[serde(default)]
    pub san: String,
    /// The name the audit log records (as `cert:<name>`); defaults to the `cn` or `san`.
    #[serde(default)]
    pub name: String,
    /// The tenant its requests belong to.
    pub tenant: String,
    pub roles: Vec<Role>,
}

/// One `[[api_keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Recorded in the audit log as `key:<name>`.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits (`applctl keys new` prints it). The key itself is
    /// never stored.
    pub sha256: String,
    pub tenant: String,
    pub roles: Vec<Role>,
    /// `false` revokes the key: it is refused (UNAUTHENTICATED) and the refusal names it.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A mapped certificate identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub name: String,
    pub tenant: String,
    pub roles: Roles,
}

/// A configured API key (without the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub name: String,
    pub tenant: String,
    pub roles: Roles,
    pub enabled: bool,
}

/// Everything identity resolution reads, built from one config; replaced whole on SIGHUP.
#[derive(Debug, Clone)]
pub struct AuthTable {
    by_cn: HashMap<String, CertIdentity>,
    by_san: HashMap<String, CertIdentity>,
    keys: HashMap<[u8; 32], KeyIdentity>,
    /// The configured tenants (a gateway may name only these).
    tenants: Vec<String>,
    pub admin_group: String,
    /// The gid of `admin_group`, looked up when the table is built (start and SIGHUP).
    pub admin_gid: Option<u32>,
    pub local_admin_roles: Roles,
    pub local_roles: Roles,
    pub local_tenant: String,
    pub anonymous_roles: Roles,
    pub anonymous_tenant: String,
    /// `tls.client_certs = "required"` (and TLS is on).
    pub certs_required: bool,
}

/// The table of a config without `[auth]`, identities or keys: Unix peers get the default
/// tenant and roles, never an empty tenant (found by the `request_validation` fuzz target).
impl Default for AuthTable {
    fn default() -> Self {
        Self::new(&AuthSettings::default(), &[], &[], &[])
    }
}

impl AuthTable {
    /// The table of a whole (validated) config.
    pub fn from_config(c: &crate::config::Config) -> Self {
        let mut t = Self::new(&c.auth, &c.identities, &c.api_keys, &c.tenants);
        t.certs_required =
            !c.tls.insecure_plaintext && c.tls.client_certs == crate::tls::ClientCerts::Required;
        t
    }

    /// Builds the table from checked settings (see [`validate`]).
    pub fn new(
        auth: &AuthSettings,
        identities: &[IdentityConfig],
        keys: &[ApiKeyConfig],
        tenants: &[TenantConfig],
    ) -> Self {
        let mut t = AuthTable {
            admin_group: auth.admin_group.clone(),
            admin_gid: super::local::group_gid(&auth.admin_group),
            local_admin_roles: auth.local_admin_roles.iter().copied().collect(),
            local_roles: auth.local_roles.iter().copied().collect(),
            local_tenant: auth.local_tenant.clone(),
            anonymous_roles: auth.anonymous_roles.iter().copied().collect(),
            anonymous_tenant: auth.anonymous_tenant.clone(),
            tenants: tenants.iter().map(|t| t.name.clone()).collect(),
            by_cn: HashMap::new(),
            by_san: HashMap::new(),
            keys: HashMap::new(),
            certs_required: false,
        };
        for i in identities {
            let id = CertIdentity {
                name: i.display_name().to_owned(),
                tenant: i.tenant.clone(),
                roles: i.roles.iter().copied().collect(),
            };
            if !i.cn.is_empty() {
                t.by_cn.insert(i.cn.clone(), id.clone());
            }
            if !i.san.is_empty() {
                t.by_san.insert(i.san.clone(), id);
            }
        }
        for k in keys {
            if let Some(d) = parse_digest(&k.sha256) {
                t.keys.insert(
                    d,
                    KeyIdentity {
                        name: k.name.clone(),
                        tenant: k.tenant.clone(),
                        roles: k.roles.iter().copied().collect(),
                        enabled: k.enabled,
                    },
                );
            }
        }
        t
    }

    /// The identity of a verified certificate: by subject CN first, then by its SANs.
    pub fn certificate(&self, cn: Option<&str>, sans: &[String]) -> Option<&CertIdentity> {
        cn.and_then(|cn| self.by_cn.get(cn))
            .or_else(|| sans.iter().find_map(|s| self.by_san.get(s)))
    }

    /// The configured key whose digest matches `key`. The lookup is on the SHA-256 of the key,
    /// so its timing says nothing about the key.
    pub fn api_key(&self, key: &str) -> Option<&KeyIdentity> {
        self.keys.get(&key_digest(key))
    }

    /// True when `name` is a configured tenant, or `default`.
    pub fn tenant_exists(&self, name: &str) -> bool {
        name == DEFAULT_TENANT || self.tenants.iter().any(|t| t == name)
    }
}

impl IdentityConfig {
    fn display_name(&self) -> &str {
        [&self.name, &self.cn, &self.san]
            .into_iter()
            .find(|s| !s.is_empty())
            .map_or("", String::as_str)
    }
}

/// The SHA-256 of an API key as the config stores it.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).ok())
        .flatten()
        .map(|()| out)
}

/// Checks the identity settings against the tenant table; returns the offending key and why.
pub fn validate(
    auth: &AuthSettings,
    identities: &[IdentityConfig],
    keys: &[ApiKeyConfig],
    tenants: &[TenantConfig],
) -> Result<(), (String, String)> {
    let tenant_ok = |t: &str| t == DEFAULT_TENANT || tenants.iter().any(|c| c.name == t);
    let unknown_tenant = |key: String, t: &str| {
        Err((
            key,
            format!("names tenant {t:?}, which is not in [[tenants]] (nor \"default\")"),
        ))
    };
    let ident = |key: String, what: &str, s: &str| -> Result<(), (String, String)> {
        appl_audit::Ident::new(s).map(drop).map_err(|_| {
            (
                key,
                format!(
                    "{what} {s:?} must be 1-256 of ASCII letters, digits and ._-:@/=,+[]# (the \
                     audit log records it)"
                ),
            )
        })
    };
    if auth.admin_group.is_empty() {
        return Err((
            "auth.admin_group".into(),
            "is empty; name a group (root is always an admin)".into(),
        ));
    }
    if !tenant_ok(&auth.local_tenant) {
        return unknown_tenant("auth.local_tenant".into(), &auth.local_tenant);
    }
    if !tenant_ok(&auth.anonymous_tenant) {
        return unknown_tenant("auth.anonymous_tenant".into(), &auth.anonymous_tenant);
    }
    let mut cns = std::collections::HashSet::new();
    let mut sans = std::collections::HashSet::new();
    for (i, id) in identities.iter().enumerate() {
        let key = |k: &str| format!("identities[{i}].{k}");
        if id.cn.is_empty() == id.san.is_empty() {
            return Err((key("cn"), "set exactly one of `cn` and `san`".into()));
        }
        if !id.cn.is_empty() && !cns.insert(&id.cn) {
            return Err((key("cn"), "repeats another identity's cn".into()));
        }
        if !id.san.is_empty() && !sans.insert(&id.san) {
            return Err((key("san"), "repeats another identity's san".into()));
        }
        let k = if id.name.is_empty() {
            key(if id.cn.is_empty() { "san" } else { "cn" })
        } else {
            key("name")
        };
        ident(k, "the name", id.display_name())?;
        if !tenant_ok(&id.tenant) {
            return unknown_tenant(key("tenant"), &id.tenant);
        }
        if id.roles.is_empty() {
            return Err((key("roles"), "is empty; give at least one role".into()));
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut digests = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let key = |f: &str| format!("api_keys[{i}].{f}");
        ident(key("name"), "the name", &k.name)?;
        if !names.insert(&k.name) {
            return Err((key("name"), "repeats another key's name".into()));
        }
        let Some(d) = parse_digest(&k.sha256) else {
            return Err((
                key("sha256"),
                "must be the key's SHA-256 as 64 hex digits (applctl keys new prints it); \
                 never the key itself"
                    .into(),
            ));
        };
        if !digests.insert(d) {
            return Err((key("sha256"), "repeats another key's digest".into()));
        }
        if !tenant_ok(&k.tenant) {
            return unknown_tenant(key("tenant"), &k.tenant);
        }
        if k.roles.is_empty() {
            return Err((key("roles"), "is empty; give at least one role".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantConfig {
        toml::from_str(&format!("name = \"{name}\"")).expect("tenant")
    }

    #[test]
    fn certificates_map_by_cn_then_san_and_keys_by_digest() {
        let ids: Vec<IdentityConfig> = toml::from_str::<toml::Table>(
            r#"
[[i]]
cn = "ward-a-app"
tenant = "ward-a"
roles = ["inference"]
[[i]]
san = "gw.example.org"
tenant = "default"
roles = ["inference", "gateway"]
"#,
        )
        .expect("toml")["i"]
            .clone()
            .try_into()
            .expect("identities");
        let keys = vec![ApiKeyConfig {
            name: "litellm".into(),
            sha256: hex::encode(key_digest("appl_secret")),
            tenant: "ward-a".into(),
            roles: vec![Role::Inference],
            enabled: false,
        }];
        let tenants = [tenant("ward-a")];
        validate(&AuthSettings::default(), &ids, &keys, &tenants).expect("valid");
        let t = AuthTable::new(&AuthSettings::default(), &ids, &keys, &tenants);
        assert_eq!(
            t.certificate(Some("ward-a-app"), &[])
                .map(|i| i.tenant.as_str()),
            Some("ward-a")
        );
        let gw = t
            .certificate(Some("other"), &["gw.example.org".into()])
            .expect("by san");
        assert!(gw.roles.contains(Role::Gateway));
        assert!(t.certificate(Some("nobody"), &[]).is_none());
        let k = t.api_key("appl_secret").expect("key");
        assert!(!k.enabled);
        assert!(t.api_key("appl_secreT").is_none());
        assert!(t.tenant_exists("ward-a") && t.tenant_exists("default"));
        assert!(!t.tenant_exists("ward-b"));
    }

    #[test]
    fn bad_identity_settings_name_the_key() {
        let tenants = [tenant("ward-a")];
        let id = |cn: &str, san: &str, tenant: &str, roles: Vec<Role>| IdentityConfig {
            cn: cn.into(),
            san: san.into(),
            name: String::new(),
            tenant: tenant.into(),
            roles,
        };
        let key = |sha: &str, tenant: &str| ApiKeyConfig {
            name: "k".into(),
            sha256: sha.into(),
            tenant: tenant.into(),
            roles: vec![Role::Inference],
            enabled: true,
        };
        let good_sha = "ab".repeat(32);
        let cases: Vec<(Vec<IdentityConfig>, Vec<ApiKeyConfig>, &str)> = vec![
            (
                vec![id("", "", "ward-a", vec![Role::Inference])],
                vec![],
                "identities[0].cn",
            ),
            (
                vec![id("a", "b", "ward-a", vec![Role::Inference])],
                vec![],
                "identities[0].cn",
            ),
            (
                vec![id("a", "", "ward-b", vec![Role::Inference])],
                vec![],
                "identities[0].tenant",
            ),
            (
                vec![id("a", "", "ward-a", vec![])],
                vec![],
                "identities[0].roles",
            ),
            (
                vec![id("has space", "", "ward-a", vec![Role::Inference])],
                vec![],
                "identities[0].cn",
            ),
            (
                vec![
                    id("a", "", "ward-a", vec![Role::Inference]),
                    id("a", "", "ward-a", vec![Role::Inference]),
                ],
                vec![],
                "identities[1].cn",
            ),
            (
                vec![],
                vec![key("appl_plaintext_key", "ward-a")],
                "api_keys[0].sha256",
            ),
            (vec![], vec![key(&good_sha, "nope")], "api_keys[0].tenant"),
        ];
        for (ids, keys, want) in cases {
            let (k, why) =
                validate(&AuthSettings::default(), &ids, &keys, &tenants).expect_err(want);
            assert_eq!(k, want, "{why}");
        }
    }
}
