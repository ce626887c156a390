//! twilio-ingest: receives Twilio webhooks and turns each inbound message into a job in Supabase.
//!
//! `main.rs` parses the command line; everything else lives here so tests start the very same app.

pub mod config;
mod connection;
pub mod dlq;
mod http;
pub mod ingest;
pub mod jobs;
pub mod phone;
pub mod spool;
pub mod supabase;
pub mod telemetry;
pub mod twilio;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

pub use config::Config;
pub use http::{BODY_LIMIT, WEBHOOK_PATH};

use crate::ingest::{Ingestor, Settings, Workers};
use crate::spool::Spool;
use crate::supabase::Supabase;

/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] spool::OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The service, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    ingestor: Ingestor,
    workers: Workers,
    drain_limit: Duration,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        Self::build_with(config, Settings { deadline: config.deadline, ..Settings::default() }).await
    }

    pub async fn build_with(config: &Config, settings: Settings) -> Result<Self, StartError> {
        let spool = Spool::open(&config.spool_dir)?;
        if spool.depth() > 0 {
            tracing::warn!(depth = spool.depth(), "found spooled messages from an earlier run; replaying them");
        }
        let supabase = Supabase::new(&config.supabase_url, &config.service_key);
        let drain_limit = drain_limit(settings.deadline);
        let (ingestor, workers) = Ingestor::start(supabase.clone(), spool, settings);
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let state = http::AppState {
            ingestor: ingestor.clone(),
            supabase,
            verifier: http::Verifier {
                public_url: config.public_url.clone(),
                tokens: config.auth_tokens.clone(),
                account_sid: config.account_sid.clone(),
            },
            metrics: telemetry::metrics(),
            slots: http::slots(),
        };
        Ok(Application { listener, router: http::router(state), ingestor, workers, drain_limit })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn ingestor(&self) -> &Ingestor {
        &self.ingestor
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight finish,
    /// and drains the batcher, all within a bounded time.
    ///
    /// The accept loop is hyper-util's rather than `axum::serve` so that a client that trickles
    /// its headers is cut off (`HEADER_TIMEOUT`) instead of holding a connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Application { listener, router, ingestor, workers, drain_limit } = self;
        let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        connections.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        // One HTTP/2 connection must not stand for thousands of requests.
        connections.http2().timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
        let graceful = GracefulShutdown::new();
        // Below the open-file limit, whatever clients do: past it, new connections wait in the
        // listen backlog instead of failing accept() in a loop.
        let open = Arc::new(tokio::sync::Semaphore::new(connection::max_connections()));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors, most likely: wait rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Answers are small and latency is what Twilio waits on: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    let stream = TokioIo::new(connection::Idle::new(stream));
                    let connection = connections.serve_connection_with_upgrades(stream, service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                        drop(permit);
                    });
                }
            }
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // The router holds a handle on the batcher's queue, which drains only once all are gone.
        drop((listener, router));
        if tokio::time::timeout(drain_limit, graceful.shutdown()).await.is_err() {
            tracing::warn!(?drain_limit, "requests still open after the drain limit; closing them");
        }
        if tokio::time::timeout(drain_limit, workers.shutdown(ingestor)).await.is_err() {
            tracing::warn!("background work still running after the drain limit");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long a graceful shutdown may take: one deadline for requests in flight, one for the
/// batches they queued, and a second to spare. `fly.toml`'s kill_timeout must exceed it.
pub fn drain_limit(deadline: Duration) -> Duration {
    deadline * 2 + Duration::from_secs(1)
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
