//! Connecting to appld: the local Unix socket by default; TCP with `--addr`, over TLS with a
//! client certificate (`grpcs://`, `--ca`, `--cert`, `--key`) or, where the daemon allows it,
//! plaintext (`http://`); an API key with `--api-key`. The TLS client itself is
//! `appl_proto::client`, shared with the tests and the benches.

use std::path::PathBuf;

use anyhow::Context;
use appl_proto::client::{connect_tls, connect_unix, Authed, TlsClient};
use tonic::transport::Endpoint;

/// Where the daemon is, and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// The daemon's Unix socket.
    #[arg(
        long,
        global = true,
        env = "APPL_SOCKET",
        default_value = "/run/appl/appld.sock"
    )]
    pub socket: PathBuf,
    /// Connect over TCP instead: grpcs://HOST:PORT (TLS; needs --ca), or http://HOST:PORT for a
    /// daemon that serves plaintext. Without a scheme: grpcs when --ca is given.
    #[arg(long, global = true, env = "APPL_ADDR")]
    pub addr: Option<String>,
    /// The CA bundle (PEM) the daemon's certificate chains to.
    #[arg(long, global = true, env = "APPL_CA")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for mTLS.
    #[arg(long, global = true, env = "APPL_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, env = "APPL_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Check the daemon's certificate against this name instead of the address's host.
    #[arg(long, global = true, env = "APPL_SERVER_NAME")]
    pub server_name: Option<String>,
    /// An API key, sent as `authorization: Bearer <key>` (prefer the environment variable: a
    /// command line is visible to other local users).
    #[arg(long, global = true, env = "APPL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ConnArgs {
    pub async fn connect(&self) -> anyhow::Result<Authed> {
        let channel = match &self.addr {
            Some(addr) => self.connect_tcp(addr).await?,
            None => connect_unix(&self.socket).await.with_context(|| {
                format!(
                    "cannot reach appld on {}; is it running? (use --socket or --addr)",
                    self.socket.display()
                )
            })?,
        };
        Authed::new(channel, self.api_key.as_deref()).context("--api-key")
    }

    async fn connect_tcp(&self, addr: &str) -> anyhow::Result<tonic::transport::Channel> {
        let tls = addr.starts_with("grpcs://")
            || addr.starts_with("https://")
            || (!addr.contains("://") && self.ca.is_some());
        if !tls {
            let url = if addr.contains("://") {
                addr.to_owned()
            } else {
                format!("http://{addr}")
            };
            return Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad --addr {url}"))?
                .connect()
                .await
                .with_context(|| format!("cannot reach appld at {url}; is it running?"));
        }
        let ca = self
            .ca
            .as_ref()
            .context("grpcs:// needs --ca (the CA bundle the daemon's certificate chains to)")?;
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let tls = TlsClient {
            ca_pem: read(ca)?,
            identity,
            server_name: self.server_name.clone(),
        };
        connect_tls(addr, &tls)
            .await
            .with_context(|| format!("cannot reach appld at {addr} over TLS; is it running, and do --ca and its certificate match?"))
    }
}

/// A gRPC error as the operator should read it.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
