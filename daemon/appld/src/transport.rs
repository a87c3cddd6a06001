//! The daemon's own HTTP server (gRPC is HTTP/2): hyper serves the routes on each listener,
//! HTTP/1.1 and HTTP/2 alike (h2 over TLS by ALPN, h2c by prior knowledge on plaintext TCP and
//! the Unix socket).
//!
//! TLS: each TCP connection is handshaken with the TLS material current when it was accepted
//! (a `ServerConfig` swapped whole on SIGHUP: new connections take the new one, open ones keep
//! theirs, so a reload drops no stream). Its client certificate is then checked against the
//! site CA ([`crate::tls`]) and the result rides on every request of the connection as a
//! [`PeerAuth`], as do a Unix socket peer's uid and groups, for the edge to resolve identities.
//!
//! Why not tonic's transport server: it cancels a call itself, as `CANCELLED`, the moment the
//! call's `grpc-timeout` expires, racing the request path's own deadline handling (which must
//! make the `completed` audit record durable before it answers `DEADLINE_EXCEEDED`). Owning
//! the connection loop also lets each connection carry what the request path needs to know
//! about its peer (the TCP address, the Unix socket peer's credentials), and gives the drain
//! one place to stop accepting, let connections finish, or cut them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tower::ServiceExt;
use tracing::{debug, info};

use crate::identity::{local, PeerAuth};
use crate::live::Live;
use crate::tls::TlsMaterial;

/// How long a TCP client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 header list ceiling; `limits.max_metadata_bytes` (at most 1 MiB) refuses less,
/// naming its key, before this is reached.
const MAX_HEADER_LIST: u32 = 2 << 20;

/// The routes every connection serves: gRPC services (and, later, plain HTTP ones).
pub type Routes = axum::Router;

/// Where connections come from.
#[derive(Debug)]
pub enum Incoming {
    /// Plaintext TCP (`tls.insecure_plaintext`).
    Tcp(TcpListener),
    /// TCP with TLS, handshaken with the material current at each accept.
    Tls(TcpListener, Arc<Live<TlsMaterial>>),
    Unix(UnixListener),
}

/// What a request knows about its connection: tonic's own connect-info types, so that
/// `Request::remote_addr` and the Unix peer credentials work as they do under tonic's server.
#[derive(Clone)]
enum ConnInfo {
    Tcp(TcpConnectInfo),
    Unix(UdsConnectInfo),
}

impl Incoming {
    /// Accepts one connection and what is known about its peer.
    async fn accept(&self) -> std::io::Result<(Conn, ConnInfo)> {
        match self {
            Incoming::Tcp(l) | Incoming::Tls(l, _) => {
                let (s, remote) = l.accept().await?;
                // Small gRPC messages (one token per chunk) must not wait for Nagle.
                s.set_nodelay(true)?;
                let info = TcpConnectInfo {
                    local_addr: s.local_addr().ok(),
                    remote_addr: Some(remote),
                };
                Ok((Conn::Tcp(s), ConnInfo::Tcp(info)))
            }
            Incoming::Unix(l) => {
                let (s, addr) = l.accept().await?;
                let info = UdsConnectInfo {
                    peer_addr: Some(Arc::new(addr)),
                    peer_cred: s.peer_cred().ok(),
                };
                Ok((Conn::Unix(s), ConnInfo::Unix(info)))
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Runs the per-connection preliminaries (the TLS handshake and the client certificate check,
/// or the Unix peer's groups), then serves the connection until it ends or is told to finish.
async fn serve_conn(
    conn: Conn,
    info: ConnInfo,
    tls: Option<Arc<TlsMaterial>>,
    routes: Routes,
    watcher: Watcher,
) {
    match (conn, tls) {
        (Conn::Tcp(s), None) => serve_io(s, info, PeerAuth::Plaintext, routes, watcher).await,
        (Conn::Tcp(s), Some(material)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&material.server));
            let peer = match &info {
                ConnInfo::Tcp(i) => i.remote_addr,
                ConnInfo::Unix(_) => None,
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    info!(target: "auth", peer = ?peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    info!(target: "auth", peer = ?peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert = material.check_peer(tls.get_ref().1.peer_certificates());
            // The material is not needed past the check: the connection holds its own config.
            drop(material);
            serve_io(tls, info, PeerAuth::Tls(Arc::new(cert)), routes, watcher).await
        }
        (Conn::Unix(s), _) => {
            let cred = match &info {
                ConnInfo::Unix(u) => u.peer_cred,
                ConnInfo::Tcp(_) => None,
            };
            let Some(cred) = cred else {
                debug!(target: "auth", "a Unix socket peer without credentials; closing");
                return;
            };
            let (uid, gid) = (cred.uid(), cred.gid());
            let groups = tokio::task::spawn_blocking(move || local::groups_of(uid, gid))
                .await
                .unwrap_or_else(|_| vec![gid]);
            let peer = PeerAuth::Unix {
                uid,
                gid,
                groups: groups.into(),
            };
            serve_io(s, info, peer, routes, watcher).await
        }
    }
}

async fn serve_io<I>(io: I, info: ConnInfo, peer: PeerAuth, routes: Routes, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = with_conn_info(routes, info, peer);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_header_list_size(MAX_HEADER_LIST);
    let c = builder.serve_connection(TokioIo::new(io), svc);
    log_end(watcher.watch(c.into_owned()).await)
}

/// Serves `routes` on `incoming` until `stop` resolves, then stops accepting and waits for the
/// open connections to finish what they carry (HTTP/2 GOAWAY: no new streams, running ones
/// complete). Dropping the returned future (the drain timed out) cuts every connection.
pub async fn serve(
    incoming: Incoming,
    routes: Routes,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    // Connections live in this set: when the future is dropped, so are they.
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = incoming.accept() => {
                let (conn, info) = match accepted {
                    Ok(c) => c,
                    // A peer that left before the accept completed, or a transient shortage of
                    // file descriptors: keep serving the others.
                    Err(e) => {
                        debug!(target: "api", error = %e, "accept failed");
                        continue;
                    }
                };
                let tls = match &incoming {
                    Incoming::Tls(_, material) => Some(material.get()),
                    _ => None,
                };
                let watcher = graceful.watcher();
                conns.spawn(serve_conn(conn, info, tls, routes.clone(), watcher));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(incoming);
    // Tell every connection to finish, and keep polling them until they have.
    let shutdown = graceful.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

fn log_end<E: std::fmt::Display>(r: Result<(), E>) {
    if let Err(e) = r {
        debug!(target: "api", error = %e, "connection ended with an error");
    }
}

/// The routes as a hyper service that stamps each request with its connection's info.
fn with_conn_info(
    routes: Routes,
    info: ConnInfo,
    peer: PeerAuth,
) -> TowerToHyperService<
    impl tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
            Future = impl Send,
        > + Clone,
> {
    let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        match &info {
            ConnInfo::Tcp(i) => req.extensions_mut().insert(i.clone()).map(drop),
            ConnInfo::Unix(i) => req.extensions_mut().insert(i.clone()).map(drop),
        };
        req.extensions_mut().insert(peer.clone());
        routes.clone().oneshot(req)
    });
    TowerToHyperService::new(svc)
}
