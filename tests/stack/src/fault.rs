//! A TCP proxy that can be told to misbehave, put between the service and the gateway.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultMode {
    /// Forward bytes both ways.
    Pass = 0,
    /// Accept and read, never answer: a hung upstream.
    Stall = 1,
    /// Accept and close at once: a crashed upstream behind a live load balancer.
    Drop = 2,
}

pub struct FaultProxy {
    pub port: u16,
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
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
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
                            tokio::spawn(handle(client, upstream, mode, epoch_rx.clone()));
                        }
                    }
                }
            });
        });
        FaultProxy { port, mode, epoch, _shutdown: shutdown }
    }

    pub fn set(&self, mode: FaultMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

async fn handle(mut client: TcpStream, upstream: u16, mode: u8, mut epoch: watch::Receiver<u64>) {
    // Only a change after this connection was accepted may cut it.
    epoch.borrow_and_update();
    let _ = client.set_nodelay(true);
    match mode {
        m if m == FaultMode::Drop as u8 => {}
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
