//! The Llama forward pass on an NVIDIA GPU, mirroring `llama.rs` step for step: embedding,
//! then per layer RMSNorm, the stacked QKV product (+ biases), RoPE at each row's position, K/V
//! written to the paged pool at the row's slot, causal GQA attention through the block tables,
//! the output projection, RMSNorm, the gate|up product, SwiGLU and the down projection, each
//! projection adding into the residual stream; then the final norm of the wanted rows and the
//! output matrix.
//!
//! Precision: weights bf16 (converted from the host model's f32 on upload; exact for bf16
//! files), GEMM inputs bf16 with f32 accumulation and f32 outputs, the residual stream f32, K/V
//! bf16, attention and softmax f32. RoPE's cos/sin are the host's own values (a table per
//! position computed once with `Rope::angles`).
//!
//! Decode steps (one row per sequence, logits for every row) run as CUDA graphs captured per
//! batch-size bucket; padded rows write a scratch block past the pool and their logits are
//! dropped.

use half::bf16;
use rayon::prelude::*;
use tokenfab_backend::cpu::Matrix;
use tokenfab_backend::cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use tokenfab_backend::cuda::cudarc::driver::{CudaGraph, LaunchConfig, PushKernelArg};
use tokenfab_backend::cuda::graphs::GraphCache;
use tokenfab_backend::cuda::kernels::{ATTN_THREADS, MAX_HEAD_DIM, ROW_THREADS};
use tokenfab_backend::cuda::memory::{self, KvSizing};
use tokenfab_backend::cuda::{self, Gemm, Gpu, GpuBuf};

use crate::batch::ForwardBatch;
use crate::config::{LlamaConfig, RopeKind};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::llama::Llama;

/// How to place a model on a device.
#[derive(Clone, Debug)]
pub struct CudaConfig {
    pub ordinal: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Fraction of the device's memory to use, in (0, 1].
    pub gpu_memory_utilization: f32,
    /// Rows of one forward pass the activation buffers are sized for (larger batches grow them).
    pub max_batch_tokens: usize,
    /// Largest decode batch run as a CUDA graph; 0 runs every step without graphs.
    pub max_graph_batch: usize,
    /// At most this many KV blocks (a single-sequence session needs few).
    pub max_blocks: Option<usize>,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            ordinal: 0,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            max_batch_tokens: 512,
            max_graph_batch: 256,
            max_blocks: None,
        }
    }
}

/// One layer on the device.
struct DevLayer {
    attn_norm: GpuBuf<f32>, // (dim,)
    wqkv: GpuBuf<bf16>,     // (q_dim + 2 kv_dim, dim)
    bqkv: Option<GpuBuf<f32>>,
    wo: GpuBuf<bf16>, // (dim, q_dim)
    ffn_norm: GpuBuf<f32>,
    w_gate_up: GpuBuf<bf16>, // (2 ffn, dim)
    w_down: GpuBuf<bf16>,    // (dim, ffn)
    k: GpuBuf<bf16>,         // ((num_blocks + 1) * block_size, kv_dim); the last block is scratch
    v: GpuBuf<bf16>,
}

/// Activation and input buffers for up to `rows` rows; fixed addresses, so graphs can replay them.
struct Acts {
    rows: usize,
    table_cap: usize,
    x: GpuBuf<f32>,      // (rows, dim) residual stream
    xb: GpuBuf<bf16>,    // (rows, dim) normalized, GEMM input
    qkv: GpuBuf<f32>,    // (rows, q_dim + 2 kv_dim)
    att: GpuBuf<bf16>,   // (rows, q_dim)
    gu: GpuBuf<f32>,     // (rows, 2 ffn)
    h: GpuBuf<bf16>,     // (rows, ffn)
    last: GpuBuf<bf16>,  // (rows, dim) normalized rows whose logits are wanted
    logits: GpuBuf<f32>, // (rows, vocab)
    argmax: GpuBuf<u32>, // (rows,)
    tokens: GpuBuf<u32>, // (rows,)
    positions: GpuBuf<u32>,
    slots: GpuBuf<i64>,
    row_table: GpuBuf<i32>, // offset of each row's block table in `tables`
    row_ctx: GpuBuf<i32>,   // positions each row attends to
    logit_rows: GpuBuf<i32>,
    tables: GpuBuf<i32>, // (table_cap,) block tables, flattened
}

impl Acts {
    fn new(gpu: &Gpu, c: &LlamaConfig, rows: usize, table_cap: usize) -> Result<Self> {
        let qkv_w = c.q_dim() + 2 * c.kv_dim();
        Ok(Self {
            rows,
            table_cap,
            x: gpu.zeros(rows * c.dim)?,
            xb: gpu.zeros(rows * c.dim)?,
            qkv: gpu.zeros(rows * qkv_w)?,
            att: gpu.zeros(rows * c.q_dim())?,
            gu: gpu.zeros(rows * 2 * c.ffn_dim)?,
            h: gpu.zeros(rows * c.ffn_dim)?,
            last: gpu.zeros(rows * c.dim)?,
            logits: gpu.zeros(rows * c.vocab_size)?,
            argmax: gpu.zeros(rows)?,
            tokens: gpu.zeros(rows)?,
            positions: gpu.zeros(rows)?,
            slots: gpu.zeros(rows)?,
            row_table: gpu.zeros(rows)?,
            row_ctx: gpu.zeros(rows)?,
            logit_rows: gpu.zeros(rows)?,
            tables: gpu.zeros(table_cap)?,
        })
    }
}

/// Host-side copies of one step's inputs, reused every step.
#[derive(Default)]
struct Staging {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<i64>,
    row_table: Vec<i32>,
    row_ctx: Vec<i32>,
    logit_rows: Vec<i32>,
    tables: Vec<i32>,
}

struct Graph(CudaGraph);
// SAFETY: a graph is only launched by the executor's owner, with its context bound first.
unsafe impl Send for Graph {}

/// A kernel argument: a device address, an int or a float.
#[derive(Clone, Copy)]
enum Arg {
    P(u64),
    I(i32),
    F(f32),
}

/// The model on a device with its KV pool.
pub struct CudaExecutor {
    gpu: Gpu,
    cfg: LlamaConfig,
    block_size: usize,
    num_blocks: usize,
    weight_bytes: usize,
    embd: GpuBuf<bf16>,           // (vocab, dim)
    output: Option<GpuBuf<bf16>>, // (vocab, dim); None when tied to `embd`
    output_norm: GpuBuf<f32>,
    cos: GpuBuf<f32>, // (context_len, half)
    sin: GpuBuf<f32>,
    half: usize,
    layers: Vec<DevLayer>,
    acts: Acts,
    stage: Staging,
    graphs: GraphCache<Graph>,
    /// (rows, vocab) the last forward's logits, copied to the host.
    host_logits: Vec<f32>,
}

fn to_bf16(m: &[f32]) -> Vec<bf16> {
    m.par_iter().map(|&v| bf16::from_f32(v)).collect()
}

impl CudaExecutor {
    /// Uploads `model` to device `cfg.ordinal` and sizes the KV pool from what memory is left.
    pub fn new(model: &Llama, cfg: &CudaConfig) -> Result<Self> {
        let c = model.cfg.clone();
        if c.head_dim > MAX_HEAD_DIM {
            return Err(Error::Config(format!(
                "head dimension {} exceeds the CUDA attention kernel's {MAX_HEAD_DIM}",
                c.head_dim
            )));
        }
        let gpu = Gpu::new(cfg.ordinal)?;
        gpu.bind()?;
        let mut bytes = 0usize;
        let mut up_m = |m: &Matrix| -> Result<GpuBuf<bf16>> {
            bytes += 2 * m.data.len();
            Ok(gpu.upload(&to_bf16(&m.data))?)
        };
        let (embd_m, out_m) = model.embeddings();
        let embd = up_m(&embd_m)?;
        let output = match model.has_output() {
            true => Some(up_m(&out_m)?),
            false => None,
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let w = model.layer_weights(l);
            layers.push(DevLayer {
                wqkv: up_m(&w.wqkv)?,
                wo: up_m(&w.wo)?,
                w_gate_up: up_m(&w.w_gate_up)?,
                w_down: up_m(&w.w_down)?,
                attn_norm: gpu.upload(w.attn_norm)?,
                ffn_norm: gpu.upload(w.ffn_norm)?,
                bqkv: w.bqkv.map(|b| gpu.upload(b)).transpose()?,
                k: gpu.zeros(1)?,
                v: gpu.zeros(1)?,
            });
        }
        let weight_bytes = bytes + 4 * (2 * c.n_layers + 1) * c.dim;
        let output_norm = gpu.upload(model.output_norm())?;
        let half = model.rope().half();
        let mut cos = vec![0f32; c.context_len * half];
        let mut sin = vec![0f32; c.context_len * half];
        for p in 0..c.context_len {
            let r = p * half..(p + 1) * half;
            model
                .rope()
                .angles(p as u32, &mut cos[r.clone()], &mut sin[r]);
        }
        let (cos, sin) = (gpu.upload(&cos)?, gpu.upload(&sin)?);

        let rows = cfg.max_batch_tokens.max(1);
        let acts = Acts::new(&gpu, &c, rows, table_cap(&c, cfg.block_size, rows))?;
        gpu.stream.synchronize().map_err(cuda::Error::from)?;
        let (free_mem, total_mem) = gpu.ctx.mem_get_info().map_err(cuda::Error::from)?;
        let sizing = KvSizing {
            total_mem,
            free_mem,
            utilization: cfg.gpu_memory_utilization,
            bytes_per_block: memory::bytes_per_block(c.n_layers, c.kv_dim(), cfg.block_size, 2),
            reserve: memory::DEFAULT_RESERVE,
        };
        // One block of the pool is the scratch block of padded graph rows.
        let mut num_blocks = sizing.num_blocks()? - 1;
        if let Some(m) = cfg.max_blocks {
            num_blocks = num_blocks.min(m.max(1));
        }
        let slots = (num_blocks + 1) * cfg.block_size * c.kv_dim();
        for l in &mut layers {
            l.k = gpu.zeros(slots)?;
            l.v = gpu.zeros(slots)?;
        }
        tracing_line(&gpu, &c, num_blocks, cfg, weight_bytes);
        Ok(Self {
            graphs: GraphCache::new(cfg.max_graph_batch.min(rows)),
            gpu,
            cfg: c,
            block_size: cfg.block_size,
            num_blocks,
            weight_bytes,
            embd,
            output,
            output_norm,
            cos,
            sin,
            half,
            layers,
            acts,
            stage: Staging::default(),
            host_logits: Vec::new(),
        })
    }

    /// Greedy decoding on the device: runs the batch like [`Executor::forward`] and returns the
    /// argmax token of each of `batch.logits_rows` (lowest id on ties, as the host sampler), so
    /// only token ids cross the bus.
    pub fn forward_greedy(&mut self, batch: &ForwardBatch) -> Result<Vec<u32>> {
        let r = self.run_batch(batch)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let (logits, out) = (
            self.gpu.ptr(&self.acts.logits),
            self.gpu.ptr(&self.acts.argmax),
        );
        let vocab = self.cfg.vocab_size as i32;
        self.launch(
            "argmax_rows",
            (r as u32, 1),
            ROW_THREADS,
            &[Arg::P(logits), Arg::P(out), Arg::I(vocab)],
        )?;
        Ok(self.gpu.read(&self.acts.argmax, r)?)
    }

    /// Graph buckets captured so far.
    pub fn graphs_captured(&self) -> usize {
        self.graphs.captured()
    }

    fn launch(&self, name: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        let f = self.gpu.func(name)?;
        let mut b = self.gpu.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(p) => b.arg(p),
                Arg::I(i) => b.arg(i),
                Arg::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every kernel's arguments are built from live buffers sized for `rows` rows
        // (checked by `stage`), in the order its CUDA signature lists them.
        unsafe { b.launch(cfg) }.map_err(cuda::Error::from)?;
        Ok(())
    }

    fn gemm(
        &self,
        x: u64,
        w: &GpuBuf<bf16>,
        y: u64,
        n: usize,
        out: usize,
        acc: bool,
    ) -> Result<()> {
        let inp = w.len() / out;
        let g = Gemm {
            x,
            w: self.gpu.ptr(w),
            y,
            n,
            inp,
            out,
            accumulate: acc,
        };
        // SAFETY: x holds (n, inp) bf16 and y (n, out) f32 within the activation buffers.
        unsafe { self.gpu.gemm_bf16(g) }?;
        Ok(())
    }

    /// Stages the batch, runs it (through a graph when it is a decode step) and leaves the logits
    /// of its `logits_rows` in the first rows of `acts.logits`; returns how many.
    fn run_batch(&mut self, batch: &ForwardBatch) -> Result<usize> {
        self.gpu.bind()?;
        let Some((n_run, r_run, bucket)) = self.stage(batch)? else {
            return Ok(0);
        };
        let r = batch.logits_rows.len();
        match bucket {
            Some(b) => {
                if self.graphs.lookup(b).and_then(|(_, g)| g).is_none() {
                    let s = &self.gpu.stream;
                    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                        .map_err(cuda::Error::from)?;
                    let res = self.run(n_run, r_run);
                    let g = s.end_capture(CUgraphInstantiate_flags(0));
                    res?;
                    let g = g.map_err(cuda::Error::from)?.ok_or_else(|| {
                        cuda::Error::Driver("stream capture produced no graph".into())
                    })?;
                    self.graphs.insert(b, Graph(g));
                }
                let (_, g) = self.graphs.lookup(b).expect("bucket exists");
                g.expect("captured above")
                    .0
                    .launch()
                    .map_err(cuda::Error::from)?;
            }
            None => self.run(n_run, r_run)?,
        }
        Ok(r)
    }

    /// Fills the input buffers. Returns (rows to run, logits rows to compute, graph bucket), or
    /// `None` for an empty batch.
    fn stage(&mut self, batch: &ForwardBatch) -> Result<Option<(usize, usize, Option<usize>)>> {
        let (bs, nb) = (self.block_size, self.num_blocks);
        let (seq_of, slots) = batch.plan(bs, nb)?;
        let n = batch.tokens.len();
        if n == 0 {
            return Ok(None);
        }
        let c = &self.cfg;
        for (&tok, &pos) in batch.tokens.iter().zip(batch.positions) {
            if tok as usize >= c.vocab_size {
                return Err(Error::Batch(format!(
                    "token {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            if pos as usize >= c.context_len {
                return Err(Error::Batch(format!(
                    "position {pos} is past the context of {}",
                    c.context_len
                )));
            }
        }
        let r = batch.logits_rows.len();
        let decode = batch.seqs.len() == n
            && r == n
            && batch.logits_rows.iter().enumerate().all(|(i, &x)| i == x);
        let bucket = if decode {
            self.graphs.lookup(n).map(|(b, _)| b)
        } else {
            None
        };
        let n_run = bucket.unwrap_or(n);
        let r_run = bucket.unwrap_or(r);

        let st = &mut self.stage;
        st.tables.clear();
        let mut seq_off = Vec::with_capacity(batch.seqs.len());
        for seq in batch.seqs {
            let last = batch.positions[seq.rows.end - 1] as usize;
            seq_off.push(st.tables.len() as i32);
            st.tables
                .extend(seq.block_table[..last / bs + 1].iter().map(|&b| b as i32));
        }
        let scratch_off = st.tables.len() as i32;
        st.tables.push(nb as i32);
        st.tokens.clear();
        st.tokens.extend_from_slice(batch.tokens);
        st.positions.clear();
        st.positions.extend_from_slice(batch.positions);
        st.slots.clear();
        st.slots.extend(slots.iter().map(|&s| s as i64));
        st.row_table.clear();
        st.row_table.extend(seq_of.iter().map(|&s| seq_off[s]));
        st.row_ctx.clear();
        st.row_ctx
            .extend(batch.positions.iter().map(|&p| p as i32 + 1));
        st.logit_rows.clear();
        st.logit_rows
            .extend(batch.logits_rows.iter().map(|&x| x as i32));
        // Padded rows of a graph bucket: token 0 at position 0, writing and reading the scratch
        // block; their logits are computed and never read.
        for t in n..n_run {
            st.tokens.push(0);
            st.positions.push(0);
            st.slots.push((nb * bs) as i64);
            st.row_table.push(scratch_off);
            st.row_ctx.push(1);
            st.logit_rows.push(t as i32);
        }

        if n_run > self.acts.rows || st.tables.len() > self.acts.table_cap {
            let rows = n_run.max(self.acts.rows);
            let cap = st.tables.len().max(table_cap(c, bs, rows));
            // Captured graphs point into the old buffers.
            self.graphs.clear();
            self.acts = Acts::new(&self.gpu, c, rows, cap)?;
        }
        let (g, a, st) = (&self.gpu, &mut self.acts, &self.stage);
        g.write(&st.tokens, &mut a.tokens)?;
        g.write(&st.positions, &mut a.positions)?;
        g.write(&st.slots, &mut a.slots)?;
        g.write(&st.row_table, &mut a.row_table)?;
        g.write(&st.row_ctx, &mut a.row_ctx)?;
        g.write(&st.logit_rows, &mut a.logit_rows)?;
        g.write(&st.tables, &mut a.tables)?;
        Ok(Some((n_run, r_run, bucket)))
    }

    /// The launches of one forward pass over `n` staged rows, `r` of them producing logits.
    /// Nothing here synchronizes or allocates, so it can be captured as a graph.
    fn run(&self, n: usize, r: usize) -> Result<()> {
        let c = &self.cfg;
        let g = &self.gpu;
        let a = &self.acts;
        let (dim, q_dim, ffn) = (c.dim, c.q_dim(), c.ffn_dim);
        let qkv_w = q_dim + 2 * c.kv_dim();
        let (x, xb, qkv, att, gu, h) = (
            g.ptr(&a.x),
            g.ptr(&a.xb),
            g.ptr(&a.qkv),
            g.ptr(&a.att),
            g.ptr(&a.gu),
            g.ptr(&a.h),
        );
        let rows = n as u32;
        let eps = Arg::F(c.rms_eps);
        let neox = i32::from(c.rope_kind == RopeKind::Neox);
        self.launch(
            "embed_rows",
            (rows, 1),
            ROW_THREADS,
            &[
                Arg::P(g.ptr(&a.tokens)),
                Arg::P(g.ptr(&self.embd)),
                Arg::P(x),
                Arg::I(dim as i32),
            ],
        )?;
        let norm = |w: &GpuBuf<f32>| {
            self.launch(
                "rms_norm_bf16",
                (rows, 1),
                ROW_THREADS,
                &[
                    Arg::P(x),
                    Arg::P(0),
                    Arg::P(g.ptr(w)),
                    Arg::P(xb),
                    Arg::I(dim as i32),
                    eps,
                ],
            )
        };
        // The hot loop: every layer over all rows at once.
        for l in &self.layers {
            norm(&l.attn_norm)?;
            self.gemm(xb, &l.wqkv, qkv, n, qkv_w, false)?;
            self.launch(
                "qkv_rope_kv_write",
                (rows, 1),
                ROW_THREADS,
                &[
                    Arg::P(qkv),
                    Arg::P(l.bqkv.as_ref().map_or(0, |b| g.ptr(b))),
                    Arg::P(g.ptr(&a.positions)),
                    Arg::P(g.ptr(&self.cos)),
                    Arg::P(g.ptr(&self.sin)),
                    Arg::P(g.ptr(&a.slots)),
                    Arg::P(g.ptr(&l.k)),
                    Arg::P(g.ptr(&l.v)),
                    Arg::I(c.n_heads as i32),
                    Arg::I(c.n_kv_heads as i32),
                    Arg::I(c.head_dim as i32),
                    Arg::I(self.half as i32),
                    Arg::I(neox),
                ],
            )?;
            self.launch(
                "paged_attention",
                (rows, c.n_heads as u32),
                ATTN_THREADS,
                &[
                    Arg::P(qkv),
                    Arg::P(g.ptr(&l.k)),
                    Arg::P(g.ptr(&l.v)),
                    Arg::P(g.ptr(&a.tables)),
                    Arg::P(g.ptr(&a.row_table)),
                    Arg::P(g.ptr(&a.row_ctx)),
                    Arg::P(att),
                    Arg::I(c.n_heads as i32),
                    Arg::I(c.n_kv_heads as i32),
                    Arg::I(c.head_dim as i32),
                    Arg::I(self.block_size as i32),
                    Arg::F(1.0 / (c.head_dim as f32).sqrt()),
                ],
            )?;
            self.gemm(att, &l.wo, x, n, dim, true)?;
            norm(&l.ffn_norm)?;
            self.gemm(xb, &l.w_gate_up, gu, n, 2 * ffn, false)?;
            let blocks = (n * ffn).div_ceil(ROW_THREADS as usize).min(65535) as u32;
            self.launch(
                "silu_mul_bf16",
                (blocks, 1),
                ROW_THREADS,
                &[Arg::P(gu), Arg::P(h), Arg::I(n as i32), Arg::I(ffn as i32)],
            )?;
            self.gemm(h, &l.w_down, x, n, dim, true)?;
        }
        if r == 0 {
            return Ok(());
        }
        let last = g.ptr(&a.last);
        self.launch(
            "rms_norm_bf16",
            (r as u32, 1),
            ROW_THREADS,
            &[
                Arg::P(x),
                Arg::P(g.ptr(&a.logit_rows)),
                Arg::P(g.ptr(&self.output_norm)),
                Arg::P(last),
                Arg::I(dim as i32),
                eps,
            ],
        )?;
        let out = self.output.as_ref().unwrap_or(&self.embd);
        self.gemm(last, out, g.ptr(&a.logits), r, c.vocab_size, false)
    }
}

/// Block-table entries for `rows` sequences of the full context, plus the scratch table.
fn table_cap(c: &LlamaConfig, block_size: usize, rows: usize) -> usize {
    rows * c.context_len.div_ceil(block_size) + 1
}

fn tracing_line(gpu: &Gpu, c: &LlamaConfig, num_blocks: usize, cfg: &CudaConfig, wb: usize) {
    eprintln!(
        "cuda:{} {} (sm_{}{}): weights {:.2} GiB bf16, KV pool {} blocks of {} tokens ({} tokens, {} layers)",
        gpu.info.ordinal,
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        wb as f64 / (1u64 << 30) as f64,
        num_blocks,
        cfg.block_size,
        num_blocks * cfg.block_size,
        c.n_layers
    );
}

impl Executor for CudaExecutor {
    fn forward(&mut self, batch: &ForwardBatch) -> Result<&[f32]> {
        let r = self.run_batch(batch)?;
        self.host_logits = self.gpu.read(&self.acts.logits, r * self.cfg.vocab_size)?;
        Ok(&self.host_logits)
    }
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    fn device(&self) -> String {
        format!("cuda:{}", self.gpu.info.ordinal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_llama;

    /// Without a GPU, building the executor is a typed error, never a panic.
    #[test]
    fn without_a_device_new_is_an_error() {
        let g = tokenfab_loader::Gguf::from_bytes(tiny_llama("llama", 64).to_bytes()).unwrap();
        let model = Llama::from_gguf(&g).unwrap();
        match CudaExecutor::new(&model, &CudaConfig::default()) {
            Ok(e) => eprintln!("a CUDA device is present: {}", e.device()),
            Err(e) => assert!(matches!(e, Error::Device(_)), "{e}"),
        }
    }

    #[test]
    fn table_capacity_covers_full_contexts() {
        let g = tokenfab_loader::Gguf::from_bytes(tiny_llama("llama", 64).to_bytes()).unwrap();
        let c = LlamaConfig::from_gguf(&g).unwrap();
        let cap = table_cap(&c, 16, 4);
        assert_eq!(cap, 4 * c.context_len.div_ceil(16) + 1);
    }
}
