//! The metrics endpoint of `run --metrics-addr`: HTTP/1.1 (hyper), `GET
//! /metrics` in the Prometheus text format, everything else 404.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Binds `addr` now (so a taken port is a start-up error) and serves in the
/// background until the returned task is dropped or aborted.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    let registry = Arc::new(registry);
    tracing::info!("metrics: http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, registry.clone()));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("metrics: {peer}: {e}");
                }
            });
        }
    }))
}

async fn answer(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "ingress-xdp: metrics are at GET /metrics\n".into(),
        );
    }
    // The pinned state is read with syscalls: off the async workers.
    match tokio::task::spawn_blocking(move || super::render(&registry)).await {
        Ok(text) => reply(StatusCode::OK, super::CONTENT_TYPE, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("collecting metrics failed: {e}\n"),
        ),
    }
}
