//! One sequence driven through the model with its own KV blocks: what `generate`, `chat`, `score`
//! and `perplexity` use. The serving engine schedules many sequences over a shared pool instead.

use tokenfab_models::{Executor, ForwardBatch, KvCache, KvDtype, Model, Scratch, SeqSlice};

use crate::error::{Error, Result};

const BLOCK_SIZE: usize = 16;

/// What runs the session's forward passes.
enum Runner<'m> {
    /// A host model with the session's own KV pool.
    Cpu {
        model: &'m Model,
        kv: KvCache,
        scratch: Box<Scratch>,
    },
    /// Any executor (e.g. a GPU) whose pool holds at least the session's blocks.
    Exec(Box<dyn Executor>),
}

pub struct Session<'m> {
    runner: Runner<'m>,
    /// Tokens the session holds.
    capacity: usize,
    /// Blocks 0..n of the private pool, in order.
    block_table: Vec<u32>,
    /// Tokens whose K/V are in the cache, in order.
    tokens: Vec<u32>,
    /// Most tokens per forward pass (prompt chunks).
    pub max_chunk: usize,
}

impl<'m> Session<'m> {
    /// A session able to hold `capacity` tokens (capped at the model's context length).
    pub fn new(model: &'m Model, capacity: usize) -> Result<Self> {
        let ctx = model.cfg.context_len;
        if capacity > ctx {
            return Err(Error::Invalid(format!(
                "{capacity} tokens do not fit the model's context of {ctx}"
            )));
        }
        let blocks = capacity.max(1).div_ceil(BLOCK_SIZE);
        Ok(Self {
            runner: Runner::Cpu {
                model,
                kv: model.new_kv_cache(KvDtype::default(), BLOCK_SIZE, blocks)?,
                scratch: Box::default(),
            },
            capacity: blocks * BLOCK_SIZE,
            block_table: (0..blocks as u32).collect(),
            tokens: Vec::new(),
            max_chunk: 512,
        })
    }

    /// A session on an executor (any device), using blocks `0..` of its pool for up to
    /// `capacity` tokens.
    pub fn with_executor(exec: Box<dyn Executor>, capacity: usize) -> Result<Session<'static>> {
        let ctx = exec.config().context_len;
        if capacity > ctx {
            return Err(Error::Invalid(format!(
                "{capacity} tokens do not fit the model's context of {ctx}"
            )));
        }
        let bs = exec.block_size();
        let blocks = capacity.max(1).div_ceil(bs);
        if blocks > exec.num_blocks() {
            return Err(Error::Invalid(format!(
                "{capacity} tokens need {blocks} KV blocks; the {} pool has {}",
                exec.device(),
                exec.num_blocks()
            )));
        }
        Ok(Session {
            runner: Runner::Exec(exec),
            capacity: blocks * bs,
            block_table: (0..blocks as u32).collect(),
            tokens: Vec::new(),
            max_chunk: 512,
        })
    }

    /// The executor's device ("cpu" for a host model).
    pub fn device(&self) -> String {
        match &self.runner {
            Runner::Cpu { .. } => "cpu".into(),
            Runner::Exec(e) => e.device(),
        }
    }

    /// Most tokens this session holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens processed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets everything after the first `len` tokens (their K/V are overwritten later).
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Appends `new` and returns the logits after each of `new[logits_from..]`:
    /// (new.len() - logits_from, vocab). Long inputs run in chunks of `max_chunk`.
    pub fn feed(&mut self, new: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        let cap = self.capacity;
        if self.tokens.len() + new.len() > cap {
            return Err(Error::Invalid(format!(
                "{} tokens exceed this session's capacity of {cap}",
                self.tokens.len() + new.len()
            )));
        }
        let mut logits = Vec::new();
        for (c, chunk) in new.chunks(self.max_chunk.max(1)).enumerate() {
            let base = c * self.max_chunk;
            let start = self.tokens.len() as u32;
            let positions: Vec<u32> = (start..start + chunk.len() as u32).collect();
            let rows: Vec<usize> = (0..chunk.len())
                .filter(|&i| base + i >= logits_from)
                .collect();
            let seqs = [SeqSlice {
                rows: 0..chunk.len(),
                block_table: &self.block_table,
            }];
            let batch = ForwardBatch {
                tokens: chunk,
                positions: &positions,
                seqs: &seqs,
                logits_rows: &rows,
            };
            logits.extend_from_slice(match &mut self.runner {
                Runner::Cpu { model, kv, scratch } => model.forward_into(&batch, kv, scratch)?,
                Runner::Exec(e) => e.forward(&batch)?,
            });
            self.tokens.extend_from_slice(chunk);
        }
        Ok(logits)
    }
}
