//! Connecting to appld: the local Unix socket by default, TCP with `--addr`.

use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// Where the daemon is.
#[derive(Debug, clap::Args)]
pub struct ConnArgs {
    /// The daemon's Unix socket.
    #[arg(
        long,
        global = true,
        env = "APPL_SOCKET",
        default_value = "/run/appl/appld.sock"
    )]
    pub socket: PathBuf,
    /// Connect over TCP instead, such as http://127.0.0.1:50051.
    #[arg(long, global = true, env = "APPL_ADDR")]
    pub addr: Option<String>,
}

impl ConnArgs {
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        if let Some(addr) = &self.addr {
            let addr = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            return Endpoint::from_shared(addr.clone())
                .with_context(|| format!("bad --addr {addr}"))?
                .connect()
                .await
                .with_context(|| format!("cannot reach appld at {addr}; is it running?"));
        }
        appl_proto::client::connect_unix(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach appld on {}; is it running? (use --socket or --addr)",
                    self.socket.display()
                )
            })
    }
}

/// A gRPC error as the operator should read it.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
