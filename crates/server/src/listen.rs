//! Accepting and keeping connections, as hardened HTTP servers do (nginx's
//! `client_header_timeout`, `worker_connections`; hyper's header read timeout):
//!
//! - a connection must send a request's headers within `header_read_timeout` (an idle
//!   keep-alive connection too) and its body within `body_read_timeout` (json.rs), so half-sent
//!   requests cannot hold sockets and file descriptors for ever;
//! - at most `max_connections` are open at once (by default a little under the process's open
//!   file limit, so `accept` never runs out of descriptors); one more is answered with a 503
//!   that says why and closed;
//! - accepted sockets get a small send buffer, so that a client that stops reading a stream
//!   stops the stream within `--stream-timeout` (outbox.rs) instead of after the kernel has
//!   buffered hundreds of kilobytes;
//! - on shutdown the server drains: it keeps accepting (so `/ready` answers 503 from outside,
//!   and keep-alive requests get a 503 with `Connection: close`, guard.rs), lets requests in
//!   flight finish for up to the drain timeout, then closes every connection.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokenfab_engine::EngineHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::error::ApiError;

/// Descriptors kept for everything but connections: the process's own (about 16: runtime,
/// engine, logs) and the refusals being written.
const RESERVED_FDS: usize = 32;
/// Refusals answered at leisure at once (each holds its socket up to a second to read what the
/// client sent); past that the answer is written once and the socket closed at once.
const MAX_REFUSALS: usize = 8;

/// How connections are accepted and timed (`tokenfab serve` flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionLimits {
    /// A connection must send a request's headers within this (idle keep-alive ones too).
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this, once its headers have.
    pub body_read_timeout: Duration,
    /// Most connections open at once; `None`: the open-file limit less a reserve.
    pub max_connections: Option<usize>,
    /// `SO_SNDBUF` of accepted sockets; `None`: the kernel's default (and autotuning).
    pub send_buffer_bytes: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: None,
            send_buffer_bytes: Some(32 << 10),
        }
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do) and returns the connections that leaves room for.
#[cfg(unix)]
pub fn default_max_connections() -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    let soft = unsafe {
        let mut r = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(RESERVED_FDS).clamp(8, 65_536)
}

#[cfg(not(unix))]
pub fn default_max_connections() -> usize {
    1024
}

/// Logs at most once a second (a flood must not become a flood of log lines).
fn warn_rarely(last_ms: &AtomicU64, epoch: Instant, msg: impl FnOnce()) {
    let now = epoch.elapsed().as_millis() as u64;
    let last = last_ms.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 1000)
        && last_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        msg();
    }
}

/// Out of descriptors or memory for sockets: `accept` would fail again at once.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The 503 a connection over the limit gets.
fn refusal(max: usize) -> String {
    let body =
        serde_json::to_string(&ApiError::TooManyConnections { max }.body()).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a connection over the limit with a 503 naming it, then closes it (after reading
/// what the client sent, so the close does not reset the connection under the answer).
async fn refuse(mut sock: TcpStream, max: usize) {
    let resp = refusal(max);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        sock.write_all(resp.as_bytes()).await?;
        sock.shutdown().await?;
        let mut buf = [0u8; 4096];
        while sock.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// What every connection task shares.
struct Conns {
    app: Router,
    limits: ConnectionLimits,
    max: usize,
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    epoch: Instant,
    last_warn: AtomicU64,
}

impl Conns {
    fn accepted(&self, sock: TcpStream) {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            warn_rarely(&self.last_warn, self.epoch, || {
                tracing::warn!(
                    max = self.max,
                    "connection limit reached (--max-connections); refusing new connections"
                )
            });
            match self.refusing.clone().try_acquire_owned() {
                Ok(p) => {
                    let max = self.max;
                    tokio::spawn(async move {
                        refuse(sock, max).await;
                        drop(p);
                    });
                }
                // A flood: answer without waiting, and free the descriptor now.
                Err(_) => {
                    let _ = sock.try_write(refusal(self.max).as_bytes());
                }
            }
            return;
        };
        let _ = sock.set_nodelay(true);
        if let Some(n) = self.limits.send_buffer_bytes {
            let _ = socket2::SockRef::from(&sock).set_send_buffer_size(n);
        }
        let svc = TowerToHyperService::new(self.app.clone());
        let header_timeout = self.limits.header_read_timeout;
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = b.serve_connection(TokioIo::new(sock), svc);
            tokio::pin!(conn);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped => {
                    // Finish the response in flight, close an idle connection.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
}

/// What the drain waits for, and how long at most.
pub struct Drain {
    pub engine: EngineHandle,
    /// Requests whose responses are not yet sent (guard.rs).
    pub in_flight: Arc<AtomicUsize>,
    pub timeout: Duration,
}

impl Drain {
    fn busy(&self) -> (usize, usize) {
        (
            self.engine.num_unfinished(),
            self.in_flight.load(Ordering::SeqCst),
        )
    }
}

/// Serves `app` until `shutdown`, then drains (see the module docs). True when every request
/// finished within the drain's timeout; false when the timeout cut some off.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Drain,
) -> std::io::Result<bool> {
    let (engine, drain_timeout) = (drain.engine.clone(), drain.timeout);
    let max = limits
        .max_connections
        .unwrap_or_else(default_max_connections)
        .max(1);
    tracing::info!(
        max_connections = max,
        header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
        body_read_timeout_s = limits.body_read_timeout.as_secs_f64(),
        send_buffer_bytes = limits.send_buffer_bytes,
        "accepting connections"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Conns {
        app,
        limits,
        max,
        open: Arc::new(Semaphore::new(max)),
        refusing: Arc::new(Semaphore::new(MAX_REFUSALS)),
        stop: stop_rx,
        epoch: Instant::now(),
        last_warn: AtomicU64::new(0),
    };
    let last_accept_warn = AtomicU64::new(0);
    tokio::pin!(shutdown);
    let mut drain_end: Option<tokio::time::Instant> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let finished = loop {
        let deadline = async {
            match drain_end {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => conns.accepted(sock),
                Err(e) if is_exhaustion(&e) => {
                    warn_rarely(&last_accept_warn, conns.epoch, || {
                        tracing::warn!(error = %e, "accept failed; retrying")
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            },
            () = &mut shutdown, if drain_end.is_none() => {
                tracing::info!(
                    in_flight = drain.busy().1,
                    timeout_s = drain_timeout.as_secs_f64(),
                    "shutting down: no new requests; finishing those in flight"
                );
                engine.begin_drain();
                drain_end = Some(tokio::time::Instant::now() + drain_timeout);
            }
            () = deadline => {
                let (unfinished, in_flight) = drain.busy();
                tracing::warn!(
                    unfinished,
                    in_flight,
                    "shutdown timeout reached; cutting off the requests still running"
                );
                break false;
            }
            _ = poll.tick(), if drain_end.is_some() => {
                if drain.busy() == (0, 0) {
                    break true;
                }
            }
        }
    };
    drop(listener);
    let _ = stop_tx.send(true);
    // Idle connections close at once; those cut off get a moment to say so.
    let grace = Duration::from_secs(1);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, conns.open.acquire_many(all)).await;
    Ok(finished)
}
