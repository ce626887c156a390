//! A TCP proxy that can be told to misbehave, put between the service and the gateway: stall,
//! drop, or lie (redirect elsewhere, answer an HTML page, answer Cloudflare's 522 before or after
//! passing the request on).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultMode {
    /// Forward bytes both ways.
    Pass = 0,
    /// Accept and read, never answer: a hung upstream.
    Stall = 1,
    /// Answer `307` with a `Location` on another origin (the proxy's trap, which counts visits).
    Redirect = 3,
    /// Answer `200 text/html` to everything: a wrong URL, a captive portal, a single-page app.
    Html = 4,
    /// Answer Cloudflare's `522` (origin unreachable) without passing the request on.
    Cloudflare522 = 5,
    /// Pass the request on, wait for the upstream's whole answer (so it has committed), then answer
    /// `522` instead of it. Every lie closes its connection, so a change of mode applies to the
    /// next request.
    Cloudflare522AfterCommit = 6,
}

pub struct FaultProxy {
    pub port: u16,
    /// Connections made to the origin that `Redirect` points at.
    trap_visits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    /// Changing the mode also cuts the connections opened under the old one.
    epoch: watch::Sender<u64>,
    _shutdown: std::sync::mpsc::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream`. It runs on a thread
    /// and runtime of its own and stops when dropped.
    pub fn start(upstream: u16) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        std_listener.set_nonblocking(true).expect("non-blocking");
        let port = std_listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FaultMode::Pass as u8));
        let (epoch, epoch_rx) = watch::channel(0u64);
        let (shutdown, stopped) = std::sync::mpsc::channel::<()>();
        let thread_mode = mode.clone();
        let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        trap.set_nonblocking(true).expect("non-blocking");
        let trap_port = trap.local_addr().unwrap().port();
        let trap_visits = Arc::new(AtomicUsize::new(0));
        let visits = trap_visits.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                let trap = TcpListener::from_std(trap).expect("a tokio listener");
                tokio::spawn(async move {
                    while let Ok((mut visitor, _)) = trap.accept().await {
                        visits.fetch_add(1, Ordering::SeqCst);
                        let _ = visitor.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
                    }
                });
                let stop = tokio::task::spawn_blocking(move || {
                    let _ = stopped.recv();
                });
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let mode = thread_mode.load(Ordering::SeqCst);
                            tokio::spawn(handle(client, upstream, trap_port, mode, epoch_rx.clone()));
                        }
                    }
                }
            });
        });
        FaultProxy { port, trap_visits, mode, epoch, _shutdown: shutdown }
    }

    /// How many connections reached the origin a `Redirect` points at.
    pub fn trap_visits(&self) -> usize {
        self.trap_visits.load(Ordering::SeqCst)
    }

    pub fn set(&self, mode: FaultMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

async fn handle(mut client: TcpStream, upstream: u16, trap_port: u16, mode: u8, mut epoch: watch::Receiver<u64>) {
    // Only a change after this connection was accepted may cut it.
    epoch.borrow_and_update();
    let _ = client.set_nodelay(true);
    let page = "<!doctype html><html><body>Welcome</body></html>";
    match mode {
        m if m == FaultMode::Redirect as u8 => {
            while let Some(request) = read_request(&mut client).await {
                let path = request_path(&request);
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{trap_port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if client.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        m if m == FaultMode::Html as u8 => {
            while read_request(&mut client).await.is_some() {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                if client.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        m if m == FaultMode::Cloudflare522 as u8 || m == FaultMode::Cloudflare522AfterCommit as u8 => {
            while let Some(request) = read_request(&mut client).await {
                if m == FaultMode::Cloudflare522AfterCommit as u8 {
                    // One connection per request, read to its end: the upstream has answered, so
                    // whatever it did is committed.
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let request = force_close(&request);
                    if server.write_all(&request).await.is_err() {
                        return;
                    }
                    let mut answer = Vec::new();
                    let _ = server.read_to_end(&mut answer).await;
                }
                let body = "<html><title>522: Connection timed out</title></html>";
                let answer = format!(
                    "HTTP/1.1 522 \r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        m if m == FaultMode::Stall as u8 => {
            let mut sink = [0u8; 4096];
            loop {
                tokio::select! {
                    _ = epoch.changed() => break,
                    read = client.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { break },
                }
            }
        }
        _ => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = epoch.changed() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        }
    }
}

/// Reads one HTTP/1.1 request (head, and a body of `Content-Length` bytes); None at the end.
async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = client.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        request.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while request.len() < head_end + length {
        let n = client.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        request.extend_from_slice(&buf[..n]);
    }
    Some(request)
}

fn request_path(request: &[u8]) -> String {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).split_whitespace().nth(1).unwrap_or("/").to_owned()
}

/// The request with `Connection: close`, so the upstream ends its answer by closing.
fn force_close(request: &[u8]) -> Vec<u8> {
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |e| e + 2);
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&request[head_end..]);
    out
}
