//! The publisher thread: a current-thread tokio runtime driving the PUB socket, the replay
//! ROUTER socket and, when the PUB socket connects out, its reconnection.

use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc::Receiver;
use zeromq::{PubSocket, RouterSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::{encode_batch, Batch, BoundEndpoints, KvEventsConfig, WireFormat};
use crate::metrics::Counter;

/// The replay socket's "no more batches" sequence number: -1 as 8 big-endian bytes.
const END_SEQ: [u8; 8] = [0xff; 8];
/// A connect attempt gives up after this long and is retried after a back-off.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct ThreadConfig {
    pub config: KvEventsConfig,
    pub binds: bool,
    pub format: WireFormat,
    pub medium: &'static str,
    /// Batches sent (the engine's metric).
    pub published: Arc<Counter>,
}

/// The thread's body: opens the sockets, reports how that went on `ready`, then publishes until
/// the queue closes (the engine stopped), sending what is still queued first.
pub(super) fn run(
    c: ThreadConfig,
    rx: Receiver<Batch>,
    ready: SyncSender<Result<BoundEndpoints, String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        match Publisher::open(c).await {
            Ok((mut p, bound)) => {
                let _ = ready.send(Ok(bound));
                p.serve(rx).await;
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
}

struct Publisher {
    socket: PubSocket,
    /// Connection events of `socket` (to notice a lost connection in connect mode).
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    /// The endpoint `socket` connects to, in connect mode.
    connect_to: Option<String>,
    connected: bool,
    replay: Option<RouterSocket>,
    /// The last `buffer_steps` batches: (sequence number, payload).
    buffer: VecDeque<(u64, Bytes)>,
    buffer_steps: usize,
    next_seq: u64,
    topic: Bytes,
    format: WireFormat,
    medium: &'static str,
    published: Arc<Counter>,
}

/// libzmq reads `*` as every interface; the `zeromq` crate needs the address.
fn bindable(endpoint: &str) -> String {
    endpoint.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
}

impl Publisher {
    async fn open(c: ThreadConfig) -> Result<(Self, BoundEndpoints), String> {
        let mut bound = BoundEndpoints::default();
        let mut socket = PubSocket::new();
        let monitor = socket.monitor();
        let cfg = &c.config;
        let connect_to = if c.binds {
            let ep = socket
                .bind(&bindable(&cfg.endpoint))
                .await
                .map_err(|e| format!("binding `endpoint` {}: {e}", cfg.endpoint))?;
            tracing::info!(endpoint = %ep, topic = %cfg.topic, "KV events: PUB socket bound");
            bound.publish = Some(ep.to_string());
            None
        } else {
            tracing::info!(endpoint = %cfg.endpoint, topic = %cfg.topic, "KV events: PUB socket connects out");
            Some(cfg.endpoint.clone())
        };
        let replay = match &cfg.replay_endpoint {
            None => None,
            Some(r) => {
                let mut router = RouterSocket::new();
                let ep = router
                    .bind(&bindable(r))
                    .await
                    .map_err(|e| format!("binding `replay_endpoint` {r}: {e}"))?;
                tracing::info!(replay_endpoint = %ep, "KV events: replay socket bound");
                bound.replay = Some(ep.to_string());
                Some(router)
            }
        };
        let p = Self {
            socket,
            monitor,
            connect_to,
            connected: false,
            replay,
            buffer: VecDeque::new(),
            buffer_steps: cfg.buffer_steps,
            next_seq: 0,
            topic: Bytes::from(cfg.topic.clone().into_bytes()),
            format: c.format,
            medium: c.medium,
            published: c.published,
        };
        Ok((p, bound))
    }

    async fn serve(&mut self, mut rx: Receiver<Batch>) {
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let reconnect = self.connect_to.is_some() && !self.connected;
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => self.send(b).await,
                    None => return,
                },
                req = recv_opt(&mut self.replay) => match req {
                    Ok(m) => self.serve_replay(m).await,
                    Err(e) => tracing::warn!(error = %e, "KV events: replay socket"),
                },
                Some(ev) = self.monitor.next() => {
                    if let SocketEvent::Disconnected(_) = ev {
                        self.connected = false;
                        tracing::warn!("KV events: subscriber connection lost; reconnecting");
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if reconnect => {
                    if self.try_connect().await {
                        backoff = Duration::from_millis(100);
                    } else {
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
        }
    }

    async fn try_connect(&mut self) -> bool {
        let Some(ep) = self.connect_to.clone() else {
            return true;
        };
        match tokio::time::timeout(CONNECT_ATTEMPT, self.socket.connect(&ep)).await {
            Ok(Ok(())) => {
                self.connected = true;
                tracing::info!(endpoint = %ep, "KV events: connected");
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %ep, error = %e, "KV events: connect failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Encodes and sends one batch as `[topic, seq, payload]`, keeping it for replay.
    async fn send(&mut self, b: Batch) {
        let mut payload = Vec::with_capacity(64 + b.events.len() * 96);
        encode_batch(&mut payload, b.ts, &b.events, self.format, self.medium);
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = Bytes::from(payload);
        let frames = vec![
            self.topic.clone(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.clone(),
        ];
        let msg = ZmqMessage::try_from(frames).expect("three frames");
        // PUB never waits for a subscriber: a full per-subscriber queue drops the message.
        if let Err(e) = self.socket.send(msg).await {
            tracing::warn!(error = %e, seq, "KV events: send failed");
        }
        self.published.add(1);
        if self.buffer_steps > 0 {
            if self.buffer.len() == self.buffer_steps {
                self.buffer.pop_front();
            }
            self.buffer.push_back((seq, payload));
        }
    }

    /// `[identity, "", start_seq]` -> every kept batch from `start_seq` as
    /// `[identity, "", seq, payload]`, then `[identity, "", -1, ""]`.
    async fn serve_replay(&mut self, m: ZmqMessage) {
        let Some(router) = &mut self.replay else {
            return;
        };
        let frames = m.into_vec();
        let (id, start) = match frames.as_slice() {
            [id, empty, start] if empty.is_empty() && start.len() == 8 => {
                let start = u64::from_be_bytes(start[..].try_into().expect("8 bytes"));
                (id.clone(), start)
            }
            _ => {
                tracing::warn!(frames = frames.len(), "KV events: bad replay request");
                return;
            }
        };
        let reply = |seq: Bytes, payload: Bytes| {
            ZmqMessage::try_from(vec![id.clone(), Bytes::new(), seq, payload]).expect("frames")
        };
        for (seq, payload) in self.buffer.iter().filter(|(s, _)| *s >= start) {
            let seq = Bytes::copy_from_slice(&seq.to_be_bytes());
            if router.send(reply(seq, payload.clone())).await.is_err() {
                return;
            }
        }
        let _ = router
            .send(reply(Bytes::from_static(&END_SEQ), Bytes::new()))
            .await;
    }
}

/// The next request on the replay socket, or never when there is none.
async fn recv_opt(r: &mut Option<RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match r {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
