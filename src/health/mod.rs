//! The local HTTP endpoint for supervisors and scrapers: `/healthz` (the process and its stages are
//! alive), `/readyz` (the model is loaded and the broker connected) and `/metrics` (Prometheus text).
//!
//! It listens on loopback by default: it tells anyone who can reach it what the box sees and how it
//! is doing, so exposing it is the operator's explicit choice. It only reads the shared counters;
//! nothing it serves can change the daemon's state. Failing to bind (the port taken) is logged and the
//! daemon runs on without it: answers matter more than their metrics.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Problems;
use crate::outbox::Outbox;
use crate::stats::Stats;

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// `host:port`; loopback unless the operator means to expose it.
    pub addr: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            addr: "127.0.0.1:9733".to_owned(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.enabled && self.addr.parse::<SocketAddr>().is_err() {
            problems.push(
                format!("{path}.addr"),
                format!(
                    "{:?} is not an address and port such as \"127.0.0.1:9733\"",
                    self.addr
                ),
            );
        }
    }
}

/// What the routes read.
#[derive(Clone)]
pub struct Sources {
    pub stats: Arc<Stats>,
    pub outbox: Arc<Outbox>,
    pub escalation_queue: Option<Arc<Outbox>>,
}

/// Serves the endpoint until `stop` is cancelled; `None` when disabled or the address cannot be bound.
pub async fn serve(
    config: &HttpConfig,
    sources: Sources,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if !config.enabled {
        return None;
    }
    let listener = match tokio::net::TcpListener::bind(&config.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            error!(addr = %config.addr, error = %error, "Cannot listen for health and metrics requests; running without them.");
            return None;
        }
    };
    info!(addr = %config.addr, "Serving /healthz, /readyz and /metrics.");
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(sources);
    Some(tokio::spawn(async move {
        let served = axum::serve(listener, routes)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            error!(error = %error, "The health and metrics endpoint stopped.");
        }
    }))
}

/// Alive: 200 unless the supervisor sees a stage stuck (then systemd's watchdog is not fed either).
async fn healthz(State(sources): State<Sources>) -> impl IntoResponse {
    let stuck = sources.stats.progress.stuck();
    if stuck.is_empty() {
        (StatusCode::OK, "alive\n".to_owned())
    } else {
        let names: Vec<String> = stuck
            .iter()
            .map(|(stage, busy)| format!("{stage} busy for {} s", busy.as_secs()))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: {}\n", names.join(", ")),
        )
    }
}

/// Ready: the model answers and the broker is connected; the body says which is missing.
async fn readyz(State(sources): State<Sources>) -> impl IntoResponse {
    let model = sources.stats.model.lock().unwrap().clone();
    let broker = sources.stats.broker_connected.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "ready": model.is_some() && broker,
        "model": model.as_ref().map(|model| model.name.clone()),
        "broker_connected": broker,
    });
    let status = if model.is_some() && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

async fn metrics(State(sources): State<Sources>) -> impl IntoResponse {
    let text = metrics::render(
        &sources.stats,
        &sources.outbox.status(),
        sources.escalation_queue.as_deref().map(Outbox::status),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
