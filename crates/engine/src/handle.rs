//! The engine as the server sees it: a cloneable handle to one engine thread.
//!
//! The engine thread owns the model, the KV pool and the scheduler; the handle only sends commands
//! and receives each request's events on its own channel (habit 6: one owner, a channel handle).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokenfab_loader::{ChatTemplate, Tokenizer};
use tokenfab_models::Executor;
pub use tokenfab_models::KvDtype;
use tokenfab_scheduler::SchedulerConfig;
use tokenfab_structured::Grammars;
use tokenfab_types::RequestId;
use tokio::sync::mpsc as tmpsc;

pub use crate::device::Device;
use crate::engine_core::EngineCore;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, SpecMetrics};
use crate::model::LoadedModel;
use crate::profile::HttpTimer;
use crate::request::{EngineRequest, StreamEvent};
use crate::spec::SpeculativeConfig;

/// How the engine is sized and how it schedules.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of the KV pool (K and V of every layer).
    pub kv_cache_bytes: usize,
    /// How the CPU's pool stores K and V (f16 by default; the CUDA pool is bf16 regardless).
    pub kv_cache_dtype: KvDtype,
    /// Token budget of one step (prefill chunks and decode tokens together).
    pub max_num_batched_tokens: usize,
    /// Most requests in the running batch.
    pub max_num_seqs: usize,
    /// Most requests waiting to start; more are refused with [`Error::QueueFull`].
    pub max_queued_requests: usize,
    pub enable_prefix_caching: bool,
    /// The engine counts as not ready when its loop has not come round for this long.
    pub ready_timeout: Duration,
    /// Where the model runs (`auto`: a CUDA device when one is usable, else the CPU).
    pub device: Device,
    /// CUDA: fraction of device memory to use; the KV pool takes what the weights leave
    /// (`kv_cache_bytes` sizes the CPU's pool only).
    pub gpu_memory_utilization: f32,
    /// Events buffered per request in its channel; the engine holds further ones back.
    pub stream_buffer: usize,
    /// A request whose consumer takes no event for this long while events wait is aborted (a
    /// client that stopped reading its stream); its blocks are freed.
    pub stream_timeout: Duration,
    /// Caps the KV pool at this many blocks on any device: a CLI command sizes its pool by the
    /// sequences it runs rather than by memory.
    pub max_kv_blocks: Option<usize>,
    /// KV-cache events for prefix-aware routers (`--kv-events-config`); off when `None`.
    pub kv_events: Option<crate::kv_events::KvEventsSettings>,
    /// n-gram speculative decoding (vLLM's `--speculative-config`); `None`: off.
    pub speculative: Option<SpeculativeConfig>,
    /// Time the phases inside each forward pass (per layer: norms, products, attention) into the
    /// `forward_phase_*` metrics (`--profile-forward`); costs a few clock reads per phase.
    pub profile_forward: bool,
    /// An executor that samples on the device (CUDA) plans each step while the device runs the
    /// one before (vLLM's `--async-scheduling`; `overlap.rs`). No effect on the CPU, which
    /// samples on the host.
    pub async_scheduling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            kv_cache_dtype: KvDtype::default(),
            max_num_batched_tokens: 512,
            max_num_seqs: 128,
            max_queued_requests: 1024,
            enable_prefix_caching: true,
            ready_timeout: Duration::from_secs(10),
            device: Device::Auto,
            gpu_memory_utilization: 0.9,
            stream_buffer: 64,
            stream_timeout: Duration::from_secs(60),
            max_kv_blocks: None,
            kv_events: None,
            speculative: None,
            profile_forward: false,
            async_scheduling: true,
        }
    }
}

/// Facts about the served model.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    pub model_name: String,
    pub context_len: usize,
    pub vocab_size: usize,
    /// Tokens the KV pool holds.
    pub kv_cache_tokens: usize,
    pub block_size: usize,
    /// Bytes of weights in memory.
    pub weight_bytes: usize,
    /// Where the model runs (`cpu`, `cuda:0`).
    pub device: String,
}

pub(crate) enum Command {
    Add {
        id: RequestId,
        req: Box<EngineRequest>,
        arrival: Instant,
        tx: tmpsc::Sender<StreamEvent>,
    },
    Abort(RequestId),
}

/// State shared by the handle and the engine thread.
pub(crate) struct Shared {
    pub metrics: Metrics,
    epoch: Instant,
    /// Milliseconds since `epoch` when the engine loop last came round.
    heartbeat_ms: AtomicU64,
    /// Requests submitted and not yet scheduled once.
    pub waiting: AtomicUsize,
    /// Requests submitted and not yet finished.
    pub unfinished: AtomicUsize,
    pub draining: AtomicBool,
    pub stopped: AtomicBool,
    /// The engine's estimate of when a queue place frees, ms; 0 before it knows (drain.rs).
    pub retry_after_ms: AtomicU64,
}

impl Shared {
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    info: Arc<EngineInfo>,
    cfg: Arc<EngineConfig>,
    /// The scheduler's limits, to refuse what it would refuse before queueing.
    sched_cfg: Arc<SchedulerConfig>,
    next_id: Arc<AtomicU64>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Constrained decoding's token trie and compile cache, built on first use (or why this
    /// model's tokenizer cannot back one).
    grammars: Arc<OnceLock<std::result::Result<Arc<Grammars>, String>>>,
}

impl EngineHandle {
    /// Starts the engine thread for a loaded model.
    pub fn start(m: LoadedModel, cfg: EngineConfig) -> Result<Self> {
        Self::start_with(m, cfg, |e| e)
    }

    /// [`Self::start`] with the executor passed through `wrap` (tests wrap the CPU's in a
    /// device-sampling twin, `tokenfab_models::sample_twin`).
    pub fn start_with(
        m: LoadedModel,
        cfg: EngineConfig,
        wrap: impl FnOnce(Box<dyn Executor>) -> Box<dyn Executor>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            metrics: Metrics {
                spec: cfg
                    .speculative
                    .as_ref()
                    .map(|c| SpecMetrics::new(c.num_speculative_tokens)),
                ..Metrics::default()
            },
            epoch: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            unfinished: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            retry_after_ms: AtomicU64::new(0),
        });
        let tokenizer = Arc::new(m.tokenizer);
        let template = m.template.map(Arc::new);
        let core = EngineCore::new(m.model, tokenizer.clone(), &cfg, rx, shared.clone(), wrap)?;
        let info = Arc::new(EngineInfo {
            model_name: m.name,
            context_len: core.context_len(),
            vocab_size: core.vocab_size(),
            kv_cache_tokens: core.kv_cache_tokens(),
            block_size: cfg.block_size,
            weight_bytes: core.weight_bytes(),
            device: core.device(),
        });
        let sched_cfg = Arc::new(core.scheduler_config().clone());
        let thread = std::thread::Builder::new()
            .name("tokenfab-engine".into())
            .spawn(move || core.run())
            .map_err(|e| Error::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            tx,
            shared,
            tokenizer,
            template,
            info,
            cfg: Arc::new(cfg),
            sched_cfg,
            next_id: Arc::new(AtomicU64::new(1)),
            thread: Arc::new(Mutex::new(Some(thread))),
            grammars: Arc::new(OnceLock::new()),
        })
    }

    /// Queues a request; its events arrive on the returned stream. Dropping the stream aborts it.
    /// Refused, with the reason's own [`Error`] variant, when the engine is stopping, a token id
    /// is outside the vocabulary, the scheduler could never run it (empty, too long, larger than
    /// the KV pool) or the queue is full.
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream> {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::EngineDead);
        }
        req.check_token_ids(self.info.vocab_size)?;
        self.sched_cfg
            .check_request(req.prompt_tokens.len(), req.max_tokens)?;
        let max = self.cfg.max_queued_requests;
        // Reserve a queue place first so concurrent submits cannot overshoot the limit.
        if self.shared.waiting.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull {
                max,
                retry_after_secs: self.retry_after_secs(),
            });
        }
        self.shared.unfinished.fetch_add(1, Ordering::SeqCst);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // One slot more than the buffer: the outbox keeps it for a last event (outbox.rs).
        let (etx, erx) = tmpsc::channel(self.cfg.stream_buffer.max(1) + 1);
        let cmd = Command::Add {
            id,
            req: Box::new(req),
            arrival: Instant::now(),
            tx: etx,
        };
        if self.tx.send(cmd).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.shared.unfinished.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::EngineDead);
        }
        Ok(RequestStream {
            id,
            rx: erx,
            abort: self.tx.clone(),
            done: false,
            shared: self.shared.clone(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// What compiles constraints for this model (JSON schemas, regexes, grammars, tool calls)
    /// into masks over its logits rows; built on the first call (a pass over the vocabulary),
    /// then shared. Call it off the async runtime.
    pub fn grammars(&self) -> std::result::Result<Arc<Grammars>, tokenfab_structured::Error> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(
                    self.tokenizer.clone(),
                    self.info.vocab_size,
                    tokenfab_structured::Limits::default(),
                )
                .map(Arc::new)
                .map_err(|e| match e {
                    tokenfab_structured::Error::Tokenizer(m) => m,
                    other => other.to_string(),
                })
            })
            .clone()
            .map_err(tokenfab_structured::Error::Tokenizer)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_deref()
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Prometheus text of the engine's metrics.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render(&self.info.model_name)
    }

    /// True while the engine loop keeps coming round (idle or stepping) within `ready_timeout`:
    /// a hung or dead engine is not ready.
    pub fn is_ready(&self) -> bool {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let last = self.shared.heartbeat_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) <= self.cfg.ready_timeout.as_millis() as u64
    }

    /// Seconds a refused client should wait, 1 to 60: the engine's estimate of when a queue
    /// place frees (the observed time between finishes, or before any finish the time the
    /// running request nearest its end still needs; see drain.rs), else the mean time requests
    /// have waited in the queue so far.
    pub fn retry_after_secs(&self) -> u64 {
        let est = self.shared.retry_after_ms.load(Ordering::Relaxed);
        let secs = if est > 0 {
            est as f64 / 1000.0
        } else {
            let q = &self.shared.metrics.request_queue_time_seconds;
            q.sum() / q.count().max(1) as f64
        };
        secs.ceil().clamp(1.0, 60.0) as u64
    }

    /// True while the engine thread runs: false once it has exited (shut down, or died of a
    /// panic), when the process can no longer serve anything.
    pub fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    /// Requests accepted and not yet finished.
    pub fn num_unfinished(&self) -> usize {
        self.shared.unfinished.load(Ordering::SeqCst)
    }

    /// Stops accepting requests; those in flight run to completion.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Waits (blocking) until every accepted request finished or `timeout` passed; true if idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.num_unfinished() > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Drains, then stops the engine thread once it is idle (or after `timeout`) and joins it.
    pub fn shutdown(&self, timeout: Duration) {
        self.begin_drain();
        self.wait_idle(timeout);
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().map(|mut g| g.take()).unwrap_or(None) {
            let _ = t.join();
        }
    }
}

/// The events of one request. Dropping it before the end aborts the request and frees its blocks.
pub struct RequestStream {
    id: RequestId,
    rx: tmpsc::Receiver<StreamEvent>,
    abort: mpsc::Sender<Command>,
    done: bool,
    /// For [`RequestStream::http_timer`].
    shared: Arc<Shared>,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Times the consumer's work on this stream's events (the server's SSE frames) as the
    /// `http` phase of the engine's phase metrics.
    pub fn http_timer(&self) -> HttpTimer {
        HttpTimer {
            shared: self.shared.clone(),
        }
    }

    /// The next event; `None` after `End`/`Error` (or if the engine died).
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        if ev.as_ref().is_none_or(StreamEvent::is_terminal) {
            self.done = true;
        }
        ev
    }

    /// Blocking variant for non-async callers.
    pub fn blocking_recv(&mut self) -> Option<StreamEvent> {
        if self.done {
            return None;
        }
        let ev = self.rx.blocking_recv();
        if ev.as_ref().is_none_or(StreamEvent::is_terminal) {
            self.done = true;
        }
        ev
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.abort.send(Command::Abort(self.id));
        }
    }
}
