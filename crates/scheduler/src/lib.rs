//! Continuous batching under one token budget, after vLLM v1 `vllm/v1/core/sched/scheduler.py`.
//!
//! There is no prefill or decode phase: every request has `num_computed_tokens` catching up to
//! its length (prompt + output). Each [`Scheduler::schedule`] hands out at most
//! `max_num_batched_tokens` tokens, running requests first (1 token for a decoding one, a chunk
//! for a partly prefilled one), then waiting requests in FIFO order; that one rule yields chunked
//! prefill and prefix caching. What the decodes leave is shared fairly between groups of requests
//! with prompt tokens to compute (one client call's choices, or a request alone; see `fair.rs`
//! and `admission.rs`), so one large call cannot starve a small request, and whatever a group
//! leaves unused goes to the others. When the KV cache is full, the most recently admitted
//! running request is preempted (its blocks freed, recomputed later with its output kept).
//!
//! The engine loop is `let out = sched.schedule(); let sampled = runner.execute(&out)?;
//! let finished = sched.update(&out, &sampled);`. The scheduler owns each request's tokens and
//! limits, so `update` is where a request ends on a stop token or its length cap (a request with
//! `max_tokens: 0` computes its prompt and ends there, sampling nothing); the caller ends the
//! rest (aborts, stop strings) with `finish`. With async scheduling, the next step is planned
//! before the last one's `update` (`schedule_ahead`): each token in flight is a placeholder.
//!
//! Invariant: scheduled tokens per step <= `max_num_batched_tokens`, running requests <=
//! `max_num_seqs`, and every accepted request fits the whole KV pool alone, so a step always makes
//! progress and the scheduler cannot deadlock.

mod admission;
mod config;
mod fair;
mod request;
mod scheduler;

pub use config::{SchedulerConfig, SchedulerError};
pub use request::{Finished, NewRequest, Request};
pub use scheduler::{ScheduledSeq, Scheduler, SchedulerOutput, PLACEHOLDER};
pub use tokenfab_kv_cache::{HashAlgo, KvCacheManager, KvEvent, VllmHasher};
