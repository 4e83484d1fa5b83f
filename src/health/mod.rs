//! The local HTTP endpoint for supervisors and scrapers: `/healthz` (the process and its stages are
//! alive), `/readyz` (the model is loaded and the broker connected) and `/metrics` (Prometheus text).
//!
//! It listens on loopback only (`127.0.0.1` or `::1`, validated): it tells anyone who can reach it
//! what the box sees and how it is doing, so a scraper elsewhere goes through a local agent. It only
//! reads the shared counters; nothing it serves can change the daemon's state. Failing to bind (the port taken) is logged and the
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

use crate::outbox::Outbox;
use crate::stats::Stats;
use crate::validate::Problems;

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// A loopback `address:port`.
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
        if !self.enabled {
            return;
        }
        match self.addr.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => {}
            Ok(_) => problems.push(
                format!("{path}.addr"),
                format!(
                    "{:?} is not a loopback address: the endpoint serves this machine only (scrape it with a local agent)",
                    self.addr
                ),
            ),
            Err(_) => problems.push(
                format!("{path}.addr"),
                format!(
                    "{:?} is not a loopback address and port such as \"127.0.0.1:9733\"",
                    self.addr
                ),
            ),
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
    // The address bound, not the one asked for: with port 0 only the listener knows the port.
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.addr.clone(), |addr| addr.to_string());
    info!(addr = %addr, "Serving /healthz, /readyz and /metrics.");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(addr: &str) -> Vec<String> {
        let config = HttpConfig {
            enabled: true,
            addr: addr.to_owned(),
        };
        let mut problems = Problems::default();
        config.validate("http", &mut problems);
        problems
            .into_vec()
            .into_iter()
            .map(|problem| problem.to_string())
            .collect()
    }

    #[test]
    fn only_a_loopback_address_and_port_is_accepted() {
        assert!(problems("127.0.0.1:9733").is_empty());
        assert!(problems("[::1]:9733").is_empty());
        let exposed = problems("0.0.0.0:9733");
        assert!(exposed[0].contains("not a loopback address"), "{exposed:?}");
        for bad in ["localhost", "127.0.0.1", "127.0.0.1:99999", ""] {
            let found = problems(bad);
            assert!(found[0].starts_with("http.addr:"), "{bad}: {found:?}");
        }
        let off = HttpConfig {
            enabled: false,
            addr: "0.0.0.0:1".to_owned(),
        };
        let mut none = Problems::default();
        off.validate("http", &mut none);
        assert!(none.is_empty());
    }
}
