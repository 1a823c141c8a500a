//! Serving the router: one hyper HTTP/1 connection per accepted socket, plain or TLS
//! (`--tls-cert`/`--tls-key`), until Ctrl-C or SIGTERM.
//!
//! The accept loop is ours because `axum::serve` exposes neither hyper's header-read timeout
//! (without it a client that never finishes its headers holds a connection forever) nor the
//! point where a connection is accepted, which is where the per-address limits belong.

use super::router;
use crate::context::Context;
use crate::limits::{Address, AddressTally, NoPlace, Place};
use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// How long open connections get to finish once the relay is told to stop.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until Ctrl-C or SIGTERM: https and wss with `--tls-cert`/`--tls-key`, else plain.
pub async fn serve(ctx: Arc<Context>, listener: TcpListener) -> Result<()> {
    let tls = match (&ctx.config.tls_cert, &ctx.config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let connections = AddressTally::new(
        ctx.config.max_connections.max(1),
        ctx.config.max_connections_per_address,
    );
    let app = router(ctx.clone());
    // Dropped when the relay stops: every connection then shuts down gracefully.
    let (stop, stopped) = watch::channel(());
    // Each connection holds a receiver: the sender sees them all close.
    let (all_closed, open) = watch::channel(());
    let mut shutdown = pin!(shutdown());
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let place = match connections.take(Address::of(remote.ip())) {
            Ok(place) => place,
            Err(refused) => {
                // Closed at once: an HTTP answer would cost what the limit is there to save.
                ctx.stats.connections_refused.fetch_add(1, Relaxed);
                match refused {
                    NoPlace::Full(n) => {
                        tracing::debug!(%remote, "refusing a connection: {n} are open")
                    }
                    NoPlace::AddressFull(n) => {
                        tracing::debug!(%remote, "refusing a connection: its address has {n} open")
                    }
                }
                drop(tcp);
                continue;
            }
        };
        configure(&ctx, &tcp);
        let connection = Connection {
            app: app.clone(),
            remote,
            place: Arc::new(place),
            header_timeout: ctx.config.header_timeout(),
            stopped: stopped.clone(),
            _open: open.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(tcp).await,
                Some(acceptor) => {
                    let timeout = connection.header_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(stop);
    drop(open);
    eprintln!("onebyte-relay: shutting down");
    let _ = tokio::time::timeout(DRAIN, all_closed.closed()).await;
    Ok(())
}

/// One accepted socket and what serving it needs.
struct Connection {
    app: Router,
    remote: SocketAddr,
    /// Its place among the open connections, given back when it ends: after the websocket it
    /// may have become (the socket's task holds a clone).
    place: Arc<Place>,
    header_timeout: Duration,
    stopped: watch::Receiver<()>,
    /// Held while the connection is open; the relay waits for all of them when it stops.
    _open: watch::Receiver<()>,
}

impl Connection {
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let place = self.place.clone();
        let service =
            self.app
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    request.extensions_mut().insert(place.clone());
                    request
                });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let connection = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        let mut connection = pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%remote, "connection ended: {e}");
                    }
                    break;
                }
                _ = self.stopped.changed(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn configure(ctx: &Context, tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    if let Some(bytes) = ctx.config.send_buffer {
        let _ = socket2::SockRef::from(tcp).set_send_buffer_size(bytes);
    }
}

/// rustls settings from the PEM files, for HTTP/1.1 only (websockets upgrade from it).
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("could not read the TLS certificate {}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("could not read the TLS private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "the TLS certificate {} and key {} do not make a usable pair",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
