//! Serving the router: plain HTTP, or HTTPS with `--tls-cert`/`--tls-key`, until Ctrl-C or
//! SIGTERM.

use super::router;
use crate::server::Context;
use anyhow::{Context as _, Result};
use axum::serve::ListenerExt;
use std::sync::Arc;

/// Serves until Ctrl-C or SIGTERM: https and wss with `--tls-cert`/`--tls-key`, else plain.
pub async fn serve(ctx: Arc<Context>, listener: tokio::net::TcpListener) -> Result<()> {
    if let (Some(cert), Some(key)) = (&ctx.config.tls_cert, &ctx.config.tls_key) {
        return serve_tls(ctx.clone(), listener, cert, key).await;
    }
    let send_buffer = ctx.config.send_buffer;
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        if let Some(bytes) = send_buffer {
            let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(bytes);
        }
    });
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn serve_tls(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "could not load the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown().await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(router(ctx).into_make_service())
        .await?;
    Ok(())
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
    eprintln!("onebyte-relay: shutting down");
}
