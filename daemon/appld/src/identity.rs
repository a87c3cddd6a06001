//! Who is calling: the caller's audit identity, its peer, and the tenant it names. Resolved once
//! at the edge of a request, then read (never recomputed) by the rest of the request path.

use appl_audit::Ident;

use crate::request::RequestError;

/// The metadata key a caller may name its tenant with (until mTLS identities replace it).
pub const TENANT_HEADER: &str = "x-appl-tenant";

/// Who is calling, as far as the daemon knows today.
#[derive(Debug, Clone)]
pub struct Caller {
    actor: Ident,
    peer: Option<Ident>,
    tenant: Option<Ident>,
}

impl Caller {
    /// The actor to record: the tenant, else the peer.
    pub fn actor(&self) -> &Ident {
        &self.actor
    }

    /// The peer address (`127.0.0.1:5000`, `unix:uid=0,gid=0`), if known.
    pub fn peer(&self) -> Option<&Ident> {
        self.peer.as_ref()
    }

    /// The tenant the caller names; empty when it names none (the `default` tenant).
    pub fn tenant(&self) -> &str {
        self.tenant.as_ref().map_or("", Ident::as_str)
    }

    /// Identifies a gRPC caller: the tenant from the [`TENANT_HEADER`] metadata if present (it
    /// must be a valid audit identifier once trimmed of surrounding white space), else the peer
    /// (TCP address, or the Unix socket peer's uid).
    pub fn of_grpc<T>(req: &tonic::Request<T>) -> Result<Caller, RequestError> {
        let peer = if let Some(a) = req.remote_addr() {
            Some(Ident::from(a))
        } else {
            req.extensions()
                .get::<tonic::transport::server::UdsConnectInfo>()
                .and_then(|u| u.peer_cred)
                .and_then(|c| Ident::new(format!("unix:uid={},gid={}", c.uid(), c.gid())).ok())
        };
        let tenant = match req.metadata().get(TENANT_HEADER) {
            None => None,
            Some(v) => Some(parse_tenant(v.as_bytes())?),
        };
        Caller::new(tenant, peer)
    }

    fn new(tenant: Option<Ident>, peer: Option<Ident>) -> Result<Caller, RequestError> {
        let actor = match (&tenant, &peer) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => match p.as_str().strip_prefix("unix:") {
                // `uid=0,gid=0` -> `uid:0`
                Some(cred) => {
                    Ident::new(cred.split(',').next().unwrap_or(cred).replacen('=', ":", 1))
                        .unwrap_or_else(|_| p.clone())
                }
                None => p.clone(),
            },
            (None, None) => Ident::new("unknown")
                .map_err(|e| RequestError::Internal(format!("actor cannot be audited: {e}")))?,
        };
        Ok(Caller {
            actor,
            peer,
            tenant,
        })
    }
}

/// The tenant named in a request header: trimmed of surrounding white space, and a valid audit
/// identifier (it is recorded as the actor).
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
mod tests {
    use super::*;

    #[test]
    fn the_tenant_comes_from_request_metadata() {
        let mut req = tonic::Request::new(());
        let none = Caller::of_grpc(&req).expect("no tenant");
        assert_eq!(none.tenant(), "");
        assert_eq!(none.actor().as_str(), "unknown");
        req.metadata_mut()
            .insert(TENANT_HEADER, "  clinic-a ".parse().expect("ascii"));
        let c = Caller::of_grpc(&req).expect("a tenant");
        assert_eq!(c.tenant(), "clinic-a");
        assert_eq!(c.actor().as_str(), "clinic-a");
    }

    #[test]
    fn a_tenant_that_is_not_an_identifier_is_refused() {
        for bad in ["", "a b", "x\u{1}"] {
            let err = parse_tenant(bad.as_bytes()).expect_err(bad);
            assert!(matches!(err, RequestError::Invalid(_)), "{bad:?}: {err}");
        }
        assert!(parse_tenant(&[0xff, 0x41]).is_err());
    }

    #[test]
    fn a_unix_peer_is_recorded_as_its_uid() {
        let peer = Ident::new("unix:uid=1000,gid=1000").ok();
        let c = Caller::new(None, peer).expect("caller");
        assert_eq!(c.actor().as_str(), "uid:1000");
        assert_eq!(c.peer().map(Ident::as_str), Some("unix:uid=1000,gid=1000"));
    }
}
