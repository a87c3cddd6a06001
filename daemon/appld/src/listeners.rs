//! The sockets the daemon serves on, bound before anything else starts so that a port in use is
//! reported at once (exit code 71).

use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::StartupError;

/// The sockets the daemon serves on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
    /// Prometheus metrics (`server.metrics_listen`).
    pub metrics: Option<TcpListener>,
    /// The OpenAI-compatible HTTP API (`openai.listen`).
    pub openai: Option<TcpListener>,
}

impl Listeners {
    /// Binds what the config asks for. A stale Unix socket file left by an earlier run is
    /// replaced.
    pub async fn bind(config: &Config) -> Result<Self, StartupError> {
        let mut l = Listeners::default();
        let s = &config.server;
        if !s.listen.is_empty() {
            let tcp = TcpListener::bind(&s.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    what: format!("tcp {}", s.listen),
                    source,
                })?;
            l.tcp = Some(tcp);
        }
        if !s.socket.as_os_str().is_empty() {
            let path = &s.socket;
            let bind_err = |source| StartupError::Bind {
                what: format!("unix socket {}", path.display()),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(bind_err)?;
            }
            remove_stale_socket(path).map_err(bind_err)?;
            let unix = UnixListener::bind(path).map_err(bind_err)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(s.socket_mode))
                .map_err(bind_err)?;
            l.unix = Some((unix, path.clone()));
        }
        if !s.metrics_listen.is_empty() {
            let m = TcpListener::bind(&s.metrics_listen)
                .await
                .map_err(|source| StartupError::Bind {
                    what: format!("metrics tcp {}", s.metrics_listen),
                    source,
                })?;
            l.metrics = Some(m);
        }
        if config.openai.enabled() {
            let o = TcpListener::bind(&config.openai.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    what: format!("openai tcp {}", config.openai.listen),
                    source,
                })?;
            l.openai = Some(o);
        }
        Ok(l)
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; refusing to replace it",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
