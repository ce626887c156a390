//! What one client connection may hold: no more connections than the process has file descriptors
//! for, and none that sits idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A new connection must send its first byte within this long.
pub const FIRST_BYTE: Duration = Duration::from_secs(5);
/// A connection that neither sends nor receives for this long is closed: an idle keep-alive
/// connection, in practice. Well above the longest a request can take (its body's budget plus the
/// ingest deadline), so a request in progress is never cut, and long enough that a proxy keeping a
/// pool of connections to the service (Fly's) rarely sends on one just as it is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// Descriptors kept back from connections, for the spool, the Supabase client and the listener.
const RESERVED_FDS: u64 = 128;

/// Raises the soft limit on open files to the hard one, and returns how many connections may be
/// open at once to stay below it.
pub fn max_connections() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    // None means unlimited.
    let files = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    files.saturating_sub(RESERVED_FDS).clamp(64, 65_536) as usize
}

/// A stream that fails with `TimedOut` once it has been idle too long: first [`FIRST_BYTE`], then
/// [`IDLE`] after each read or write.
pub struct Idle<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    pub fn new(inner: S) -> Self {
        Idle { inner, timer: Box::pin(tokio::time::sleep(FIRST_BYTE)) }
    }

    fn active(&mut self) {
        self.timer.as_mut().reset(Instant::now() + IDLE);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
}

impl<S> Idle<S> {
    /// What an I/O call on the inner stream came to: any answer is activity; waiting past the
    /// limit is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.watch(cx, polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Idle::new(server);
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), FIRST_BYTE);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_keeps_it_open_for_the_idle_limit() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Idle::new(server);
        let mut buf = [0u8; 8];
        client.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        assert!(server.read(&mut buf).await.is_err());
        assert_eq!(started.elapsed(), IDLE);
    }

    #[test]
    fn connections_stay_below_the_open_file_limit() {
        let max = max_connections() as u64;
        let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        assert!(max < files, "{max} connections with {files} files");
        assert!(max >= 64);
    }
}
