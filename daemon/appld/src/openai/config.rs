//! `[openai]`: the OpenAI-compatible HTTP listener. Off unless `listen` is set; served with
//! the same TLS and client-certificate rules as gRPC on TCP (`[tls]`), or plaintext where
//! `tls.insecure_plaintext` says so.

use serde::Deserialize;

/// `[openai]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// TCP address of the HTTP API, such as `127.0.0.1:8080`; empty (the default) disables it.
    pub listen: String,
    /// Also answer `GET /metrics` (Prometheus) on this listener, without credentials, as on
    /// `server.metrics_listen`.
    pub metrics: bool,
}

impl OpenAiConfig {
    /// Whether the HTTP API is served.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Checks the section; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.enabled() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "openai.listen",
                "must be an IP address and port, such as \"127.0.0.1:8080\", or empty",
            ));
        }
        Ok(())
    }
}
