//! KV-cache events for prefix-cache-aware routers (llm-d's precise prefix-cache scorer, Dynamo),
//! published as vLLM publishes them (`vllm/distributed/kv_events.py` `ZmqEventPublisher`).
//!
//! The KV manager records events (`tokenfab_kv_cache::events`); after each step the engine thread
//! hands them to [`KvEventPublisher::publish`], which never blocks: batches go through a bounded
//! queue (`max_queue_size`) to a publisher thread, and a full queue drops the batch and counts it
//! (`tokenfab:kv_events_dropped_total`; a subscriber sees the gap in sequence numbers and can ask
//! the replay socket). The publisher thread sends each batch on a ZMQ PUB socket as three frames
//! `[topic, 8-byte big-endian sequence number, msgpack KVEventBatch]` and keeps the last
//! `buffer_steps` batches for a ROUTER replay socket.

mod wire;
mod zmq;

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use tokenfab_kv_cache::{HashAlgo, KvEvent};
use tokio::sync::mpsc::{self, error::TrySendError, Sender};

use crate::error::{Error, Result};
use crate::metrics::{Counter, Metrics};
use tokenfab_kv_cache::vllm_hash::{FullHash, VllmHasher, PICKLE_MAX_BLOCK_TOKENS};
use tokenfab_scheduler::Scheduler;

pub use wire::{encode_batch, WireFormat};

/// `--kv-events-config`: the same JSON as vLLM's `KVEventsConfig`, with its defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Off unless true.
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `"zmq"` or `"null"`; unset means zmq when events are enabled, else null.
    #[serde(default)]
    pub publisher: Option<String>,
    /// PUB endpoint: bound when it holds `*` or `::` (e.g. `tcp://*:5557`), else connected to
    /// (an indexer that binds, e.g. `tcp://epp:5557`), as vLLM decides.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// ROUTER endpoint for replaying missed batches (always bound); none by default.
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    /// Messages queued per subscriber before the PUB socket drops for it.
    #[serde(default = "default_hwm")]
    pub hwm: usize,
    /// Batches waiting for the publisher thread; more are dropped (and counted).
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// First frame of every message; llm-d reads `kv@<pod>@<model>` from it.
    #[serde(default)]
    pub topic: String,
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}
fn default_buffer_steps() -> usize {
    10_000
}
/// Also the fixed per-subscriber queue of the `zeromq` crate's PUB socket.
const ZEROMQ_PUB_QUEUE: usize = 100_000;
fn default_hwm() -> usize {
    ZEROMQ_PUB_QUEUE
}
fn default_max_queue_size() -> usize {
    100_000
}

impl KvEventsConfig {
    /// Parses and checks the JSON of `--kv-events-config`; errors name the field.
    pub fn parse(json: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let c: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let at = if at == "." {
                String::new()
            } else {
                format!("`{at}`: ")
            };
            Error::Invalid(format!("--kv-events-config: {at}{}", e.inner()))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// True when events are recorded and published.
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher.as_deref().unwrap_or("zmq") == "zmq"
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("--kv-events-config: {m}")));
        match self.publisher.as_deref() {
            None | Some("zmq") | Some("null") => {}
            Some(p) => {
                return bad(format!(
                    "`publisher` must be \"zmq\" or \"null\". Given: {p:?}"
                ))
            }
        }
        for (field, ep) in [
            ("endpoint", Some(&self.endpoint)),
            ("replay_endpoint", self.replay_endpoint.as_ref()),
        ] {
            if let Some(ep) = ep.filter(|e| !e.starts_with("tcp://")) {
                return bad(format!(
                    "`{field}` must be a tcp:// endpoint (ipc and inproc are not supported). Given: {ep}"
                ));
            }
        }
        if self.hwm != ZEROMQ_PUB_QUEUE {
            return bad(format!(
                "`hwm` must be {ZEROMQ_PUB_QUEUE}: the PUB socket (the `zeromq` crate) queues that \
                 many messages per subscriber and cannot be set. Given: {}",
                self.hwm
            ));
        }
        if self.max_queue_size == 0 {
            return bad("`max_queue_size` must be >= 1. Given: 0".into());
        }
        Ok(())
    }

    /// vLLM's rule: bind when the endpoint names every interface, else connect.
    fn binds(&self) -> bool {
        self.endpoint.contains('*') || self.endpoint.contains("::")
    }
}

/// Everything the engine needs to record and publish KV events.
#[derive(Clone, Debug)]
pub struct KvEventsSettings {
    pub config: KvEventsConfig,
    /// How events are encoded in a batch (`--kv-events-encoding`).
    pub format: WireFormat,
    /// vLLM's `--prefix-caching-hash-algo`.
    pub hash_algo: HashAlgo,
    /// vLLM's `PYTHONHASHSEED`; `None` draws a random `NONE_HASH`, as vLLM does.
    pub hash_seed: Option<String>,
}

impl KvEventsSettings {
    /// The hasher of `hash_algo` with `NONE_HASH` from the seed, or random without one.
    fn hasher(&self) -> VllmHasher {
        match &self.hash_seed {
            Some(seed) => VllmHasher::with_seed(self.hash_algo, seed),
            None => VllmHasher::with_none_hash(self.hash_algo, random_none_hash()),
        }
    }
}

/// 32 unpredictable bytes, as vLLM's `os.urandom(32)` without `PYTHONHASHSEED` (from the
/// process's randomly keyed SipHash; not for secrecy, only so replicas do not agree).
fn random_none_hash() -> FullHash {
    use std::hash::{BuildHasher, Hasher};
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut b = [0u8; 32];
    for (i, c) in b.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(now);
        c.copy_from_slice(&h.finish().to_le_bytes());
    }
    FullHash::new(&b)
}

/// Turns events on in `sched` and starts their publisher; `device` is the executor's
/// ("cpu", "cuda:0", ...), published as the blocks' medium.
pub(crate) fn attach(
    sched: &mut Scheduler,
    s: &KvEventsSettings,
    device: &str,
    metrics: &Metrics,
) -> Result<KvEventPublisher> {
    let block_size = sched.config().block_size;
    let pickles = matches!(s.hash_algo, HashAlgo::Sha256 | HashAlgo::Xxhash);
    if pickles && block_size > PICKLE_MAX_BLOCK_TOKENS {
        return Err(Error::Invalid(format!(
            "--prefix-caching-hash-algo {}: `--block-size` must be <= {PICKLE_MAX_BLOCK_TOKENS}. Given: {block_size}",
            s.hash_algo
        )));
    }
    let medium = if device.starts_with("cuda") {
        "GPU"
    } else {
        "CPU"
    };
    if s.hash_seed.is_none() {
        tracing::warn!(
            "PYTHONHASHSEED is not set: KV-event block hashes start from a random seed, so no \
             other replica or indexer can reproduce them; set it to the same value everywhere"
        );
    }
    let publisher = KvEventPublisher::start(s, medium, metrics)?;
    sched.enable_kv_events(s.hasher());
    tracing::info!(
        hash_algo = %s.hash_algo,
        seeded = s.hash_seed.is_some(),
        encoding = %s.format,
        medium,
        "KV events on"
    );
    Ok(publisher)
}

/// One step's events on their way to the publisher thread.
pub struct Batch {
    /// Seconds since the Unix epoch when the step's events were taken.
    ts: f64,
    events: Vec<KvEvent>,
}

/// Where the sockets ended up (a port 0 in the configuration is a port now).
#[derive(Clone, Debug, Default)]
pub struct BoundEndpoints {
    /// The PUB socket's address when it binds.
    pub publish: Option<String>,
    pub replay: Option<String>,
}

/// The engine thread's side of the publisher: a bounded queue to the publisher thread.
pub struct KvEventPublisher {
    tx: Option<Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dropped: Arc<Counter>,
    bound: BoundEndpoints,
}

impl KvEventPublisher {
    /// Binds or connects the sockets on a new thread; errors (a port in use, a bad address)
    /// come back here. `medium` is where blocks live: "GPU" or "CPU".
    pub fn start(s: &KvEventsSettings, medium: &'static str, metrics: &Metrics) -> Result<Self> {
        let (tx, rx) = mpsc::channel(s.config.max_queue_size);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let thread_cfg = zmq::ThreadConfig {
            config: s.config.clone(),
            binds: s.config.binds(),
            format: s.format,
            medium,
            published: metrics.kv_events_published.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tokenfab-kv-events".into())
            .spawn(move || zmq::run(thread_cfg, rx, ready_tx))
            .map_err(|e| Error::Invalid(format!("cannot start the KV events thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(bound)) => Ok(Self {
                tx: Some(tx),
                thread: Some(thread),
                dropped: metrics.kv_events_dropped.clone(),
                bound,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(Error::Invalid(format!("KV events: {e}")))
            }
            Err(_) => Err(Error::Invalid("the KV events thread died".into())),
        }
    }

    /// Queues one step's events without blocking; a full queue drops them (counted).
    pub fn publish(&self, events: Vec<KvEvent>) {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Batch { ts, events }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                self.dropped.add(1);
            }
        }
    }

    pub fn bound(&self) -> &BoundEndpoints {
        &self.bound
    }
}

impl Drop for KvEventPublisher {
    /// Closes the queue; the thread sends what is queued, then exits.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
