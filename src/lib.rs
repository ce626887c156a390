//! twilio-ingest: receives Twilio webhooks and turns each inbound message into a job in Supabase.
//!
//! `main.rs` parses the command line; everything else lives here so tests start the very same app.

pub mod config;
mod connection;
pub mod dlq;
mod http;
pub mod ingest;
pub mod jobs;
pub mod operator;
pub mod phone;
mod server;
pub mod spool;
pub mod supabase;
pub mod telemetry;
mod text;
pub mod twilio;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use http::{BODY_LIMIT, WEBHOOK_PATH};

use crate::ingest::{Ingestor, Settings, Workers};
use crate::spool::Spool;
use crate::supabase::Supabase;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] spool::OpenError),
    #[error("cannot listen on port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// The service, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    ops_listener: TcpListener,
    router: axum::Router,
    ops_router: axum::Router,
    ingestor: Ingestor,
    workers: Workers,
    drain_limit: Duration,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        Self::build_with(config, Settings::default()).await
    }

    /// Builds the app with ingest tunables of the caller's; the deadline is always the configured
    /// one (`INGEST_DEADLINE_MS`).
    pub async fn build_with(config: &Config, settings: Settings) -> Result<Self, StartError> {
        let settings = Settings { deadline: config.deadline, ..settings };
        let spool = Spool::open(&config.spool_dir)?;
        if spool.depth() > 0 {
            tracing::warn!(depth = spool.depth(), "found spooled messages from an earlier run; replaying them");
        }
        let supabase = Supabase::new(&config.supabase_url, &config.service_key);
        let drain_limit = drain_limit(settings.deadline);
        let (ingestor, workers) = Ingestor::start(supabase.clone(), spool, settings);
        let bind = |port| server::bind(config.host, port).map_err(|source| StartError::Bind { port, source });
        let (listener, ops_listener) = (bind(config.port)?, bind(config.ops_port)?);
        let state = Arc::new(http::AppState {
            ingestor: ingestor.clone(),
            supabase,
            public_url: config.public_url.clone(),
            credentials: config.credentials.clone(),
            metrics: telemetry::metrics(),
            slots: http::slots(),
        });
        Ok(Application {
            listener,
            ops_listener,
            router: http::router(state.clone()),
            ops_router: http::ops_router(state),
            ingestor,
            workers,
            drain_limit,
        })
    }

    /// The public port's address: webhooks and `/healthz`.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The operations port's address: `/metrics`, `/readyz`, `/healthz`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("a bound listener has an address")
    }

    pub fn ingestor(&self) -> &Ingestor {
        &self.ingestor
    }

    /// Serves until `shutdown` completes, then stops accepting on both ports, lets requests in
    /// flight finish and drains the batcher, all within one deadline ([`drain_limit`]).
    ///
    /// The accept loop is hyper-util's rather than `axum::serve` so that a client that trickles
    /// its headers is cut off (`HEADER_TIMEOUT`) instead of holding a connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Application { listener, ops_listener, router, ops_router, ingestor, workers, drain_limit } = self;
        // One signal for everything that must stop: both accept loops, then the drain.
        let stop = CancellationToken::new();
        let graceful = Arc::new(GracefulShutdown::new());
        // Below the open-file limit, whatever clients do: past it, new connections wait in the
        // listen backlog instead of failing accept() in a loop.
        let open = Arc::new(tokio::sync::Semaphore::new(connection::max_connections()));
        let public = tokio::spawn(server::accept(listener, router, open.clone(), graceful.clone(), stop.clone()));
        let ops = tokio::spawn(server::accept(ops_listener, ops_router, open, graceful.clone(), stop.clone()));
        shutdown.await;
        stop.cancel();
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = tokio::join!(public, ops);
        let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("the accept loops have ended"));
        // One deadline for the whole drain: requests in flight, then the batches they queued
        // (the router held the last handle on the batcher's queue, so it drains only now).
        let drain = async {
            graceful.shutdown().await;
            workers.shutdown(ingestor).await;
        };
        if tokio::time::timeout(drain_limit, drain).await.is_err() {
            tracing::warn!(?drain_limit, "still draining at the deadline; stopping");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long a graceful shutdown may take, all told: the requests in flight end within one
/// deadline (then their messages are stored or spooled), and a second is left for the batches they
/// queued and for closing. `fly.toml`'s `kill_timeout` must exceed it at the largest deadline.
pub fn drain_limit(deadline: Duration) -> Duration {
    deadline + Duration::from_secs(1)
}

/// What `twilio-ingest spool drain` came to.
#[derive(Debug)]
pub struct SpoolDrained {
    pub remaining: u64,
    /// Whether this process replayed the spool, or watched the service that owns it do so.
    pub by_this_process: bool,
    pub last_stall: Option<String>,
}

/// Empties the spool in `SPOOL_DIR` into Supabase, or waits until `deadline` passes. If the
/// service on this machine owns the spool (it holds the lock), it is the one replaying: this waits
/// and watches. Use before scaling down or destroying a volume.
pub async fn drain_spool(config: &Config, deadline: Duration) -> Result<SpoolDrained, StartError> {
    let until = tokio::time::Instant::now() + deadline;
    let spool = match Spool::open(&config.spool_dir) {
        Ok(spool) => spool,
        Err(spool::OpenError::Locked(_)) => {
            let dir = config.spool_dir.clone();
            loop {
                let status = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    move || spool::status(&dir)
                })
                .await
                .expect("reading the spool does not panic");
                let remaining = status.map(|s| s.depth).unwrap_or(u64::MAX);
                if remaining == 0 || tokio::time::Instant::now() >= until {
                    return Ok(SpoolDrained { remaining, by_this_process: false, last_stall: None });
                }
                // Reading the spool decodes every segment: not so often that it competes with the
                // service replaying it, nor past the deadline.
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(Duration::from_secs(5).min(left)).await;
            }
        }
        Err(e) => return Err(e.into()),
    };
    let supabase = Supabase::new(&config.supabase_url, &config.service_key);
    // No background replay: this loop is the replay, and it keeps to the deadline.
    let settings = Settings { deadline: config.deadline, background_replay: false, ..Settings::default() };
    let (ingestor, workers) = Ingestor::start(supabase, spool, settings);
    let mut last_stall = None;
    let remaining = loop {
        // A pass cut short at the deadline loses nothing: a segment goes only once all its
        // records are stored, and what was stored already is a duplicate next time.
        match tokio::time::timeout_at(until, ingestor.drain_spool()).await {
            Ok(report) => {
                last_stall = report.stalled.or(last_stall);
                if report.remaining == 0 || tokio::time::Instant::now() >= until {
                    break report.remaining;
                }
            }
            Err(_) => {
                last_stall = last_stall.or_else(|| Some("the deadline passed during a replay pass".to_owned()));
                break ingestor.spool_depth();
            }
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(Duration::from_secs(1).min(left)).await;
    };
    workers.shutdown(ingestor).await;
    Ok(SpoolDrained { remaining, by_this_process: true, last_stall })
}

/// Completes on SIGINT (what Fly sends) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
