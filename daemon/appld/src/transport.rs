//! The daemon's own HTTP server (gRPC is HTTP/2): hyper serves the routes on each listener,
//! HTTP/1.1 and HTTP/2 alike (h2c by prior knowledge on plain TCP and the Unix socket).
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

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tower::ServiceExt;
use tracing::debug;

/// The routes every connection serves: gRPC services (and, later, plain HTTP ones).
pub type Routes = axum::Router;

/// Where connections come from.
#[derive(Debug)]
pub enum Incoming {
    Tcp(TcpListener),
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
            Incoming::Tcp(l) => {
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
                let svc = with_conn_info(routes.clone(), info);
                let builder = auto::Builder::new(TokioExecutor::new());
                match conn {
                    Conn::Tcp(s) => {
                        let c = builder.serve_connection(TokioIo::new(s), svc);
                        let c = graceful.watch(c.into_owned());
                        conns.spawn(async move { log_end(c.await) });
                    }
                    Conn::Unix(s) => {
                        let c = builder.serve_connection(TokioIo::new(s), svc);
                        let c = graceful.watch(c.into_owned());
                        conns.spawn(async move { log_end(c.await) });
                    }
                }
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
        routes.clone().oneshot(req)
    });
    TowerToHyperService::new(svc)
}
