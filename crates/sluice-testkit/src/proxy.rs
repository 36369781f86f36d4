//! A TCP proxy for fault tests: sits between the client and the broker and can slice what it
//! forwards into tiny writes, delay it, and cut connections — all at once on demand, or each one
//! after it has carried a given number of response bytes — or freeze them: a frozen connection
//! stays open and swallows everything, as a half-open one does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
pub struct Faults {
    /// Largest write forwarded at once (0: no slicing).
    pub slice_bytes: AtomicUsize,
    /// Delay before each forwarded write, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Cut a connection once it has carried this many broker-to-client bytes (0: never).
    pub cut_after_response_bytes: AtomicU64,
    /// Connections cut so far.
    pub cuts: AtomicU64,
}

pub struct Proxy {
    pub addr: String,
    pub faults: Arc<Faults>,
    cut_all: watch::Sender<u64>,
    freeze_all: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy listening on `listener`, forwarding to `upstream`.
    pub fn start(listener: std::net::TcpListener, upstream: String) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let faults = Arc::new(Faults::default());
        let (cut_all, generation) = watch::channel(0u64);
        let (freeze_all, frozen) = watch::channel(0u64);
        let task = {
            let faults = Arc::clone(&faults);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(broker) = TcpStream::connect(&upstream).await else { continue };
                    let (generation, mut frozen) = (generation.clone(), frozen.clone());
                    frozen.mark_unchanged();
                    tokio::spawn(forward_connection(client, broker, Arc::clone(&faults), generation, frozen));
                }
            })
        };
        Self { addr, faults, cut_all, freeze_all, task }
    }

    /// Freezes every open connection now: from here on it forwards nothing in either direction
    /// and never closes. Connections made later work.
    pub fn freeze_all(&self) {
        self.freeze_all.send_modify(|g| *g += 1);
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut_all.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward_connection(
    client: TcpStream,
    broker: TcpStream,
    faults: Arc<Faults>,
    mut generation: watch::Receiver<u64>,
    frozen: watch::Receiver<u64>,
) {
    generation.mark_unchanged();
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let up = pump(client_read, broker_write, Arc::clone(&faults), false, frozen.clone());
    let down = pump(broker_read, client_write, Arc::clone(&faults), true, frozen);
    let counted = tokio::select! {
        counted = up => counted,
        counted = down => counted,
        _ = generation.changed() => false,
    };
    if !counted {
        faults.cuts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies one direction; returns when either side closes or the response-byte budget runs out.
/// A cut for the budget is counted here, before the client can see it (true: counted).
/// Once the connection is frozen (`frozen` changed since it was made), what is read is dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    response: bool,
    frozen: watch::Receiver<u64>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut carried = 0u64;
    loop {
        let Ok(n) = from.read(&mut buf).await else { return false };
        if n == 0 {
            return false;
        }
        if frozen.has_changed().unwrap_or(false) {
            continue;
        }
        let mut data = &buf[..n];
        let budget = faults.cut_after_response_bytes.load(Ordering::Relaxed);
        if response && budget > 0 && carried + n as u64 > budget {
            // Forward only part of this chunk, then cut: the client sees a response end mid-frame.
            let keep = budget.saturating_sub(carried) as usize;
            let _ = to.write_all(&data[..keep]).await;
            faults.cuts.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        carried += n as u64;
        while !data.is_empty() {
            let slice = match faults.slice_bytes.load(Ordering::Relaxed) {
                0 => data.len(),
                s => s.min(data.len()),
            };
            let delay = faults.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if to.write_all(&data[..slice]).await.is_err() {
                return false;
            }
            data = &data[slice..];
        }
    }
}
