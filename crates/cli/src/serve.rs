//! `tokenfab serve`: the engine behind the OpenAI-compatible HTTP API.
//!
//! SIGTERM or Ctrl-C: drain (new requests get 503 with `Connection: close`, `/ready` 503, the
//! requests in flight finish for up to `--shutdown-timeout`), stop the engine, exit 0, or exit
//! [`EXIT_CUT_OFF`] when the timeout cut requests off. A second SIGTERM or Ctrl-C exits at once
//! with [`EXIT_FORCED`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokenfab_engine::{EngineConfig, EngineHandle};
use tokenfab_server::ServerConfig;

use crate::args::ModelArgs;

/// Exit code when the shutdown timeout cut requests off.
pub const EXIT_CUT_OFF: i32 = 3;
/// Exit code when a second signal forced the exit during the drain.
pub const EXIT_FORCED: i32 = 130;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: crate::args::SpecArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model id clients use in `model` [default: the model file's stem].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// KV cache size: bytes (`2GiB`, `512MiB`, `1000000`) or a share of system memory (`10%`).
    #[arg(long, default_value = "1GiB")]
    pub kv_cache_memory: String,
    /// How the KV cache stores K and V: auto (= f16, llama.cpp's default; bf16 on CUDA), f16,
    /// f32, q8_0 (llama.cpp's 8-bit blocks: 32 int8 and one f16 scale; about half of f16's
    /// bytes; CPU only), or fp8 (E4M3 with a scale, one byte per value, as vLLM's; CUDA only).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: tokenfab_engine::KvDtype,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Token budget of one engine step (prefill chunks and decode tokens together).
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Most requests running at once.
    #[arg(long, default_value_t = 128)]
    pub max_num_seqs: usize,
    /// Most requests waiting to start; more are refused with 429.
    #[arg(long, default_value_t = 1024)]
    pub max_queued_requests: usize,
    /// Turn automatic prefix caching off.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Turn async scheduling off (vLLM's `--async-scheduling`, on by default here): with device
    /// sampling (CUDA), each step is then planned only after the one before is done. The CPU
    /// samples on the host and never overlaps.
    #[arg(long)]
    pub no_async_scheduling: bool,
    /// Time the phases inside each forward pass (per layer: norms, products, attention) into
    /// /metrics (`tokenfab:forward_phase_seconds`), as `tokenfab bench --profile` reports them;
    /// costs a few clock reads per phase and layer. CPU only.
    #[arg(long)]
    pub profile_forward: bool,
    /// Accepted API key for /v1 routes (repeatable). Also read from TOKENFAB_API_KEY.
    #[arg(long = "api-key", value_name = "KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// File of API keys, one per line (blank lines and `#` comments skipped).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body in bytes (or with a unit: `16MiB`); larger ones get 413.
    #[arg(long, default_value = "8MiB")]
    pub max_request_bytes: String,
    /// Largest `max_tokens` a request may ask for, and the cap of the default.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// The engine counts as not ready (GET /ready -> 503) when its loop stalls this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub ready_timeout: f64,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, default_value_t = 15.0)]
    pub keep_alive: f64,
    /// Seconds a client may leave its stream unread while events wait; then the request is
    /// aborted and its memory freed (per-request buffering is bounded meanwhile).
    #[arg(long, default_value_t = 60.0)]
    pub stream_timeout: f64,
    /// Most tokens of one prompt [default: the context length].
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Per-API-key rate limit on /v1 routes, token bucket: `10/s`, `600/m`, `5/s:20` (burst 20).
    /// Over it: 429 with Retry-After. Off by default.
    #[arg(long)]
    pub rate_limit: Option<tokenfab_server::RateLimit>,
    /// Origins allowed by CORS (comma-separated or repeated; `*` for any). CORS is off without it.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: tokenfab_engine::Device,
    /// CUDA: fraction of device memory to use; the KV pool gets what the weights leave
    /// (`--kv-cache-memory` sizes the CPU's pool only).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f32,
    /// Tool-call format of prompts and outputs: hermes (also Qwen), llama3_json, mistral
    /// [default: detected from the chat template; a template that ignores tools gets a generic
    /// instruction in the hermes format].
    #[arg(long, value_parser = tool_call_parser)]
    pub tool_call_parser: Option<tokenfab_structured::ToolFormat>,
    /// Split chat outputs' `<think>...</think>` into `reasoning_content`: deepseek_r1 (the
    /// output starts inside the reasoning) or qwen3 (only an output opening with `<think>`).
    #[arg(long, value_parser = reasoning_parser)]
    pub reasoning_parser: Option<tokenfab_structured::ReasoningFormat>,
    #[command(flatten)]
    pub hardening: Hardening,
    #[command(flatten)]
    pub kv_events: KvEventsArgs,
}

fn tool_call_parser(s: &str) -> std::result::Result<tokenfab_structured::ToolFormat, String> {
    tokenfab_structured::ToolFormat::from_name(s).map_err(|e| e.to_string())
}

fn reasoning_parser(s: &str) -> std::result::Result<tokenfab_structured::ReasoningFormat, String> {
    tokenfab_structured::ReasoningFormat::from_name(s).map_err(|e| e.to_string())
}

/// Connection and per-request limits (crates/server `listen.rs`, `budget.rs`, `messages.rs`).
#[derive(clap::Args, Debug)]
pub struct Hardening {
    /// Seconds a connection gets to send a request's headers (an idle keep-alive connection is
    /// closed after as long).
    #[arg(long, default_value_t = 30.0)]
    pub header_read_timeout: f64,
    /// Seconds a request's body gets to arrive; slower ones get 408.
    #[arg(long, default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Most connections open at once; one more gets a 503 and is closed [default: the open-file
    /// limit (raised to its hard limit) less 32].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Send buffer of each connection (`32KiB`; 0: the kernel's, which grows to megabytes). Small,
    /// so that a client that stops reading a stream is noticed within --stream-timeout.
    #[arg(long, default_value = "32KiB")]
    pub send_buffer: String,
    /// Most prompt tokens one request may compute, over all its prompts and choices; also the
    /// most tokens /tokenize and /detokenize take [default: the context length, at least 65536].
    #[arg(long)]
    pub max_request_prompt_tokens: Option<usize>,
    /// Most logprob entries one response may carry (tokens with logprobs x (1 + alternatives),
    /// over all choices, echoed prompts included).
    #[arg(long, default_value_t = 131_072)]
    pub max_logprob_entries: usize,
    /// Largest response one request may ask for, estimated from `max_tokens` x `n` at the longest
    /// token's length plus logprobs (bytes or with a unit).
    #[arg(long, default_value = "32MiB")]
    pub max_response_bytes: String,
    /// Turn special-token text in chat message contents and names (`<|im_start|>`) into special
    /// tokens. Off by default: it stays text, so a message cannot forge a turn of another role.
    #[arg(long)]
    pub special_tokens_in_messages: bool,
}

impl Hardening {
    fn apply(&self, cfg: &mut ServerConfig) -> Result<()> {
        let send = parse_size(&self.send_buffer, None)? as usize;
        cfg.connections = tokenfab_server::ConnectionLimits {
            header_read_timeout: secs(self.header_read_timeout, "--header-read-timeout")?
                .max(Duration::from_millis(100)),
            body_read_timeout: secs(self.body_read_timeout, "--body-read-timeout")?
                .max(Duration::from_millis(100)),
            max_connections: self.max_connections,
            send_buffer_bytes: (send > 0).then_some(send),
        };
        cfg.work = tokenfab_server::WorkLimits {
            max_prompt_tokens_total: self.max_request_prompt_tokens,
            max_logprob_entries: self.max_logprob_entries,
            max_response_bytes: parse_size(&self.max_response_bytes, None)? as usize,
        };
        cfg.special_tokens_in_messages = self.special_tokens_in_messages;
        Ok(())
    }
}

/// KV-cache events for prefix-cache-aware routers, as vLLM publishes them (docs/deploy.md).
#[derive(clap::Args, Debug)]
pub struct KvEventsArgs {
    /// vLLM's KVEventsConfig as JSON, e.g. `{"enable_kv_cache_events": true, "publisher":
    /// "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv"}`.
    #[arg(long)]
    pub kv_events_config: Option<String>,
    /// How events are written in a batch: map (vLLM since its map encoding, e.g. 0.26) or
    /// array (older vLLM, and indexers that read only positional events).
    #[arg(long, default_value = "map")]
    pub kv_events_encoding: tokenfab_engine::WireFormat,
    /// vLLM's block hash for the events: sha256 (pickle), sha256_cbor (reproducible in any
    /// language), sha256_msgpack, xxhash, xxhash_cbor, xxhash_msgpack. The seed of the first
    /// block is PYTHONHASHSEED, as in vLLM (random when unset).
    #[arg(long, default_value = "sha256_cbor")]
    pub prefix_caching_hash_algo: tokenfab_engine::HashAlgo,
}

impl KvEventsArgs {
    /// The engine's settings, `None` when no config was given.
    fn settings(&self) -> Result<Option<tokenfab_engine::KvEventsSettings>> {
        let Some(json) = &self.kv_events_config else {
            return Ok(None);
        };
        Ok(Some(tokenfab_engine::KvEventsSettings {
            config: tokenfab_engine::KvEventsConfig::parse(json)?,
            format: self.kv_events_encoding,
            hash_algo: self.prefix_caching_hash_algo,
            hash_seed: std::env::var("PYTHONHASHSEED").ok(),
        }))
    }
}

/// `2GiB`, `512MiB`, `1.5G`, `1000000` -> bytes; `10%` -> that share of `total`.
pub fn parse_size(s: &str, total: Option<u64>) -> Result<u64> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .with_context(|| format!("bad percentage {s:?}"))?;
        if !(p > 0.0 && p <= 100.0) {
            bail!("a percentage must be in (0, 100]. Given: {s}");
        }
        let total = total.context("cannot read the system's memory size for a percentage")?;
        return Ok((total as f64 * p / 100.0) as u64);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => bail!(
            "unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB or %)"
        ),
    };
    Ok((num * mult as f64) as u64)
}

fn total_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn api_keys(a: &Args) -> Result<Vec<String>> {
    let mut keys = a.api_keys.clone();
    if let Ok(k) = std::env::var("TOKENFAB_API_KEY") {
        keys.push(k);
    }
    if let Some(p) = &a.api_key_file {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading --api-key-file {}", p.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    Ok(keys)
}

fn secs(v: f64, flag: &str) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{flag} must be a number of seconds >= 0. Given: {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn run(a: Args) -> Result<()> {
    let keys = api_keys(&a)?;
    let kv_bytes = parse_size(&a.kv_cache_memory, total_memory())?;
    let max_request_bytes = parse_size(&a.max_request_bytes, None)? as usize;
    let shutdown_timeout = secs(a.shutdown_timeout, "--shutdown-timeout")?;
    let engine_cfg = EngineConfig {
        block_size: a.block_size,
        kv_cache_bytes: kv_bytes as usize,
        kv_cache_dtype: a.kv_cache_dtype,
        max_num_batched_tokens: a.max_num_batched_tokens,
        max_num_seqs: a.max_num_seqs,
        max_queued_requests: a.max_queued_requests,
        enable_prefix_caching: !a.no_prefix_caching,
        ready_timeout: secs(a.ready_timeout, "--ready-timeout")?,
        device: a.device,
        gpu_memory_utilization: a.gpu_memory_utilization,
        stream_timeout: secs(a.stream_timeout, "--stream-timeout")?.max(Duration::from_millis(10)),
        kv_events: a.kv_events.settings()?,
        speculative: a.spec.config()?,
        profile_forward: a.profile_forward,
        async_scheduling: !a.no_async_scheduling,
        ..EngineConfig::default()
    };
    let m = a.model.load()?;
    let model_id = a.served_model_name.clone().unwrap_or_else(|| {
        m.path
            .file_stem()
            .map_or_else(|| m.name.clone(), |s| s.to_string_lossy().into_owned())
    });
    let engine = EngineHandle::start(m, engine_cfg.clone()).context("starting the engine")?;
    let info = engine.info();
    tracing::info!(
        model = %model_id,
        weights_mib = info.weight_bytes >> 20,
        context_len = info.context_len,
        kv_cache_tokens = info.kv_cache_tokens,
        kv_cache_mib = kv_bytes >> 20,
        kv_cache_dtype = %engine_cfg.kv_cache_dtype,
        block_size = info.block_size,
        max_num_seqs = a.max_num_seqs,
        max_num_batched_tokens = a.max_num_batched_tokens,
        prefix_caching = engine_cfg.enable_prefix_caching,
        speculative = ?engine_cfg.speculative,
        "engine started"
    );
    if !keys.is_empty() {
        tracing::info!(
            keys = keys.len(),
            "API key authentication on for /v1 routes"
        );
    }
    let mut cfg = ServerConfig::new(model_id);
    cfg.api_keys = keys;
    cfg.max_request_bytes = max_request_bytes;
    cfg.max_tokens_limit = a.max_tokens_limit;
    cfg.keep_alive = secs(a.keep_alive, "--keep-alive")?.max(Duration::from_millis(100));
    cfg.max_prompt_tokens = a.max_prompt_tokens;
    cfg.rate_limit = a.rate_limit;
    cfg.allowed_origins = a.allowed_origins.clone();
    cfg.tool_call_parser = a.tool_call_parser;
    cfg.reasoning_parser = a.reasoning_parser;
    a.hardening.apply(&mut cfg)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let finished = rt.block_on(serve(
        engine.clone(),
        cfg,
        &a.host,
        a.port,
        shutdown_timeout,
    ))?;
    // Whatever is still running after the timeout is cut off.
    let cut_off = engine.num_unfinished();
    engine.shutdown(Duration::from_millis(100));
    if !finished {
        tracing::warn!(cut_off, "stopped; the shutdown timeout cut requests off");
        std::process::exit(EXIT_CUT_OFF);
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and Ctrl-C (SIGINT), registered once, before the address is printed, so that none
/// is lost (or kills the process) between two waits.
#[cfg(unix)]
struct Signals([tokio::signal::unix::Signal; 2]);

#[cfg(unix)]
impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        Ok(Self([term, int]))
    }

    async fn next(&mut self) {
        let [term, int] = &mut self.0;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on the first signal (the drain starts); a second one exits the process at once.
async fn shutdown_signal(mut signals: Signals, engine: EngineHandle) {
    signals.next().await;
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!(
            cut_off = engine.num_unfinished(),
            "second signal: exiting now, cutting off the requests in flight"
        );
        std::process::exit(EXIT_FORCED);
    });
}

async fn serve(
    engine: EngineHandle,
    cfg: ServerConfig,
    host: &str,
    port: u16,
    shutdown_timeout: Duration,
) -> Result<bool> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let signals = Signals::new()?;
    // Tests and scripts read this exact line.
    eprintln!("listening on http://{addr}");
    tracing::info!(%addr, "serving the OpenAI-compatible API");
    let signal = shutdown_signal(signals, engine.clone());
    tokenfab_server::serve(listener, engine, cfg, signal, shutdown_timeout)
        .await
        .context("the HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_percentages() {
        assert_eq!(parse_size("2GiB", None).unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB", None).unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5 GB", None).unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1000", None).unwrap(), 1000);
        assert_eq!(parse_size("10%", Some(1000)).unwrap(), 100);
        assert!(parse_size("10%", None).is_err());
        assert!(parse_size("0%", Some(1000)).is_err());
        assert!(parse_size("5 parsecs", None).is_err());
        assert!(parse_size("GiB", None).is_err());
    }
}
