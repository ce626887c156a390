//! The listening side: the sockets both ports listen on, and the accept loop that serves each
//! connection within the limits a public port needs.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connection;

/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 64;
/// Connections the kernel queues before they are accepted (what tokio's own `bind` asks for).
const BACKLOG: i32 = 1024;

/// Listens on `port` at `host`, or, with no host given, on every address, IPv6 and IPv4 alike:
/// one `[::]` socket with `IPV6_V6ONLY` off. Fly's proxy reaches the public port over IPv4, while
/// its private network (the metrics scraper, private checks) is IPv6 only, so `0.0.0.0` would not
/// do for the operations port. A kernel without IPv6 gets `0.0.0.0`, and a warning.
pub(crate) fn bind(host: Option<IpAddr>, port: u16) -> io::Result<TcpListener> {
    let listener = match host {
        Some(ip) => listen(SocketAddr::new(ip, port), None)?,
        None => match listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), Some(false)) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(e) => {
                tracing::warn!(port, error = %e, "no IPv6 here; listening on IPv4 only");
                listen(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port), None)?
            }
        },
    };
    TcpListener::from_std(listener)
}

fn listen(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    // As tokio's bind does: a restarted service gets its port back at once.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts connections on `listener` until `stop` is cancelled, each served by `router` and
/// watched by `graceful`.
pub(crate) async fn accept(
    listener: TcpListener,
    router: axum::Router,
    open: Arc<tokio::sync::Semaphore>,
    graceful: Arc<GracefulShutdown>,
    stop: CancellationToken,
) {
    let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connections.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    // One HTTP/2 connection must not stand for thousands of requests.
    connections.http2().timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are small and latency is what Twilio waits on: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stream = TokioIo::new(connection::Idle::new(stream));
        let connection = graceful.watch(connections.serve_connection_with_upgrades(stream, service).into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
}
