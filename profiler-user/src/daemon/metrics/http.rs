//! `GET /metrics` over HTTP/1 (hyper). Anything else is a 404; the listener
//! binds loopback by default, and a scrape only reads the shared snapshot.
//!
//! Any local user can connect, so the endpoint is bounded: it runs on its own
//! thread (a slow or flooding client never delays draining the ring buffer),
//! holds at most [`MAX_CONNECTIONS`] connections (beyond that a connection is
//! closed at once and counted, so idle sockets cannot use up the daemon's file
//! descriptors), and a client gets [`HEADER_TIMEOUT`] to send its request
//! headers, also between requests on a kept-alive connection.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::Metrics;

/// OpenMetrics, which is what prometheus-client's text encoder writes
/// (counters' `_total`, the closing `# EOF`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Open connections at most: a few Prometheus servers and curls, with room to
/// spare, and a small share of the unit's `LimitNOFILE`.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client gets to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a whole connection may stay open (a client reading slowly).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the metrics thread failed: {0}")]
    Thread(#[source] std::io::Error),
}

/// Binds now (so a taken port is an error at start), serves on a thread of
/// its own until the process exits.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr, BindError> {
    let listen_error = |source| BindError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let bound = listener.local_addr().unwrap_or(addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BindError::Thread)?;
    std::thread::Builder::new()
        .name("loopbpf-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, metrics).await,
                    Err(e) => log::error!("metrics: listening on {addr} failed: {e}"),
                }
            })
        })
        .map_err(BindError::Thread)?;
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = false;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it: the fd is back at once.
            drop(stream);
            metrics.connection_refused();
            if !refused_logged {
                refused_logged = true;
                log::warn!(
                    "metrics: {MAX_CONNECTIONS} connections open, closing new ones (counted in loopbpf_metrics_connections_refused_total)"
                );
            }
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, metrics.clone()));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => log::debug!("metrics: connection: {e}"),
                Err(_) => log::debug!("metrics: connection open too long, closed"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", CONTENT_TYPE)
            .body(Full::new(Bytes::from(metrics.render()))),
        "/" => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(
                b"loopbpf daemon: metrics at /metrics\n",
            ))),
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
