//! The model on an NVIDIA GPU: the same forward pass as the CPU's (`forward.rs`) over the CUDA
//! device operations (`tokenfab_backend::cuda::ops`). This file only places the model on the
//! device and stages each step: weights uploaded (`cuda/weights.rs`), RoPE tables made, the KV pool sized from free
//! memory, each batch's rows, slots and block tables copied to fixed device buffers, decode steps
//! replayed as CUDA graphs.
//!
//! Precision: weights bf16 (converted from the host model's f32 on upload; exact for bf16
//! files) or, with [`GpuWeights::Fp8`], the layers' matrices as E4M3 codes with a per-tensor
//! scale (products through cuBLASLt, inputs quantized per step on the device); product inputs
//! bf16 with f32 accumulation and f32 outputs, the residual stream f32, K/V bf16 or E4M3
//! (`--kv-cache-dtype fp8`), attention and softmax f32. RoPE's cos/sin are the host's own values (a table per
//! position computed once with `Rope::angles`).
//!
//! Decode steps (one row per sequence, logits for every row) run as CUDA graphs captured per
//! batch-size bucket, after one eager step of that bucket; padded rows write a scratch block past the pool and their logits are
//! dropped.

use std::cell::Cell;

use half::bf16;
use tokenfab_backend::cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use tokenfab_backend::cuda::cudarc::driver::CudaGraph;
use tokenfab_backend::cuda::fp8::{self, DevWeight, Fp8Scratch};
use tokenfab_backend::cuda::graphs::{GraphCache, GraphStep};
use tokenfab_backend::cuda::kernels::MAX_HEAD_DIM;
use tokenfab_backend::cuda::launch::DevRope;
use tokenfab_backend::cuda::memory::{self, KvSizing};
use tokenfab_backend::cuda::ops::{CudaOps, DevKv, DevStep};
use tokenfab_backend::cuda::prefill_attention::AttnPlan;
use tokenfab_backend::cuda::{self, staging, Gpu, GpuBuf};
use tokenfab_backend::rope::RopeKind;
use tokenfab_types::TokenId;

use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::executor::{DeviceSampler, DeviceSampling, Executor};
use crate::forward::{forward, Acts};
use crate::kv::KvDtype;
use crate::model::Model;
use crate::weight::{MatrixRole, Weight, Weights};
use weights::{dummy_weights, upload_matrix};

/// How a GPU stores the layers' weight matrices (the embedding and output matrices stay bf16, as
/// vLLM keeps `lm_head` unquantized).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuWeights {
    #[default]
    Bf16,
    /// E4M3 codes with one f32 scale per matrix; products through cuBLASLt on sm_89/sm_90.
    Fp8,
}

/// The scale of an FP8 KV cache's K and V codes: 1, as vLLM's when a checkpoint carries no
/// calibrated `k_scale`/`v_scale` (E4M3's ±448 holds K and V of the models served here).
pub const FP8_KV_SCALE: f32 = 1.0;

/// Layer `l`'s (k_scale, v_scale) in a pool stored as `kv`: `None` unless FP8; then the
/// checkpoint's calibrated scales ([`Model::kv_scales`]) or [`FP8_KV_SCALE`].
pub fn fp8_kv_scales(model: &Model, kv: KvDtype, l: usize) -> Option<(f32, f32)> {
    (kv == KvDtype::Fp8).then(|| {
        model
            .kv_scales
            .as_ref()
            .map_or((FP8_KV_SCALE, FP8_KV_SCALE), |s| s[l])
    })
}

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
    /// The pool's storage: f16 (stored as bf16, the default) or fp8 (E4M3, the checkpoint's
    /// scales or [`FP8_KV_SCALE`]: [`fp8_kv_scales`]).
    pub kv_dtype: KvDtype,
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
            kv_dtype: KvDtype::F16,
        }
    }
}

impl CudaConfig {
    /// Bytes of one K or V value in the pool, or an error naming a dtype a GPU does not store.
    pub fn kv_elem_bytes(&self) -> Result<usize> {
        match self.kv_dtype {
            KvDtype::F16 => Ok(2),
            KvDtype::Fp8 => Ok(1),
            d => Err(Error::Config(format!(
                "`--kv-cache-dtype {d}` is not supported on CUDA devices (f16, stored as bf16, or fp8)"
            ))),
        }
    }
}

/// Host-side copies of one step's inputs, reused every step.
#[derive(Default)]
struct Staging {
    tokens: Vec<TokenId>,
    positions: Vec<u32>,
    slots: Vec<i64>,
    row_table: Vec<i32>,
    row_ctx: Vec<i32>,
    logit_rows: Vec<i32>,
    /// (rows run,) async scheduling's row map, -1 where a row keeps its uploaded token.
    feed: Vec<i32>,
    tables: Vec<i32>,
    seq_of: Vec<usize>,
    slot_of: Vec<usize>,
    seq_off: Vec<i32>,
    /// Which rows `prefill_attention`'s tiles serve, which `paged_attention` serves.
    attn: AttnPlan,
}

struct Graph(CudaGraph);
// SAFETY: a graph is only launched by the executor's owner, with its context bound first.
unsafe impl Send for Graph {}

type DevActs = Acts<GpuBuf<f32>, GpuBuf<bf16>>;

/// Activation buffers for `rows` rows; fixed addresses, so graphs can replay them.
fn new_acts(gpu: &Gpu, c: &ModelConfig, rows: usize) -> Result<DevActs> {
    Ok(Acts {
        x: gpu.zeros(rows * c.dim)?,
        xn: gpu.zeros(rows * c.dim)?,
        qkv: gpu.zeros(rows * (c.q_dim() + 2 * c.kv_dim()))?,
        att: gpu.zeros(rows * c.q_dim())?,
        tmp: gpu.zeros(rows * c.dim)?,
        gu: gpu.zeros(rows * 2 * c.ffn_dim)?,
        h: gpu.zeros(rows * c.ffn_dim)?,
        logits: gpu.zeros(rows * c.vocab_size)?,
    })
}

/// The model on a device with its KV pool.
pub struct CudaExecutor {
    gpu: Gpu,
    cfg: ModelConfig,
    block_size: usize,
    num_blocks: usize,
    weight_bytes: usize,
    weights: Weights<DevWeight, GpuBuf<f32>>,
    ropes: Vec<DevRope>,
    /// Per layer: ((num_blocks + 1) * block_size, kv_dim); the last block is scratch.
    kv: Vec<DevKv>,
    acts: DevActs,
    step: DevStep,
    /// (rows,) greedy tokens of the logits rows.
    argmax: GpuBuf<TokenId>,
    stage: Staging,
    graphs: GraphCache<Graph>,
    /// (rows, vocab) the last forward's logits, copied to the host.
    host_logits: Vec<f32>,
    /// Sampling on the device (`cuda/sampling.rs`).
    sampling: sampling::DevSampling,
    /// Rows whose attention ran on prefill tiles, over the executor's life.
    tile_rows: usize,
}

impl CudaExecutor {
    /// Uploads `model` to device `cfg.ordinal` and sizes the KV pool from what memory is left.
    pub fn new(model: &Model, cfg: &CudaConfig) -> Result<Self> {
        let c = model.cfg.clone();
        if c.head_dim > MAX_HEAD_DIM || !c.head_dim.is_multiple_of(8) {
            return Err(Error::Config(format!(
                "head dimension {}: the CUDA attention kernel takes multiples of 8 up to {MAX_HEAD_DIM}",
                c.head_dim
            )));
        }
        let kv_elem = cfg.kv_elem_bytes()?;
        let gpu = Gpu::new(cfg.ordinal)?;
        gpu.bind()?;
        let fp8_weights = model.gpu_weights == GpuWeights::Fp8;
        if fp8_weights {
            fp8::check_fp8_device("`--quantization fp8`", gpu.info.compute_capability)?;
        }
        if cfg.kv_dtype == KvDtype::Fp8 {
            fp8::check_fp8_device("`--kv-cache-dtype fp8`", gpu.info.compute_capability)?;
        }
        footprint(model, cfg)?.check(
            gpu.info.total_mem,
            gpu.info.free_mem,
            cfg.gpu_memory_utilization,
        )?;
        let bytes = Cell::new(0usize);
        let weights = match model.device_dummy {
            Some(d) => {
                let w = dummy_weights(&gpu, &c, d, fp8_weights)?;
                bytes.set(llama_weight_bytes(&c, d.tied_embeddings, model.gpu_weights));
                w
            }
            None => model.weights().try_map_roles(
                &mut |role, w: &Weight| -> Result<DevWeight> {
                    let d = upload_matrix(&gpu, role, w, fp8_weights)?;
                    bytes.set(bytes.get() + d.bytes());
                    Ok(d)
                },
                &mut |v: &Vec<f32>| -> Result<GpuBuf<f32>> {
                    bytes.set(bytes.get() + 4 * v.len());
                    Ok(gpu.upload(v)?)
                },
            )?,
        };
        let ropes = model
            .ropes()
            .iter()
            .map(|r| {
                let (half, n) = (r.half(), c.context_len);
                let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
                for p in 0..n {
                    let at = p * half..(p + 1) * half;
                    r.angles(p as u32, &mut cos[at.clone()], &mut sin[at]);
                }
                Ok(DevRope {
                    cos: gpu.upload(&cos)?,
                    sin: gpu.upload(&sin)?,
                    half,
                    neox: r.kind == RopeKind::Neox,
                    positions: n,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let rows = cfg.max_batch_tokens.max(1);
        let acts = new_acts(&gpu, &c, rows)?;
        let step = new_step(
            &gpu,
            &c,
            step_caps(&c, cfg.block_size, rows, 0),
            fp8_weights,
        )?;
        gpu.stream.synchronize().map_err(cuda::Error::from)?;
        let (free_mem, total_mem) = gpu.ctx.mem_get_info().map_err(cuda::Error::from)?;
        let sizing = KvSizing {
            total_mem,
            free_mem,
            utilization: cfg.gpu_memory_utilization,
            bytes_per_block: memory::bytes_per_block(
                c.n_layers,
                c.kv_dim(),
                cfg.block_size,
                kv_elem,
            ),
            reserve: memory::DEFAULT_RESERVE,
        };
        // One block of the pool is the scratch block of padded graph rows.
        let mut num_blocks = sizing.num_blocks()? - 1;
        if let Some(m) = cfg.max_blocks {
            num_blocks = num_blocks.min(m.max(1));
        }
        let slots = (num_blocks + 1) * cfg.block_size * c.kv_dim();
        let kv = (0..c.n_layers)
            .map(|l| {
                Ok(DevKv::zeros(
                    &gpu,
                    slots,
                    fp8_kv_scales(model, cfg.kv_dtype, l),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let weight_bytes = bytes.get();
        tracing_line(&gpu, &c, num_blocks, cfg, weight_bytes);
        Ok(Self {
            graphs: GraphCache::new(cfg.max_graph_batch.min(rows)),
            argmax: gpu.zeros(rows)?,
            gpu,
            cfg: c,
            block_size: cfg.block_size,
            num_blocks,
            weight_bytes,
            weights,
            ropes,
            kv,
            acts,
            step,
            stage: Staging::default(),
            host_logits: Vec::new(),
            sampling: Default::default(),
            tile_rows: 0,
        })
    }

    /// Greedy decoding on the device: runs the batch like [`Executor::forward`] and returns the
    /// argmax token of each of `batch.logits_rows` (lowest id on ties, as the host sampler), so
    /// only token ids cross the bus.
    pub fn forward_greedy(&mut self, batch: &ForwardBatch) -> Result<Vec<TokenId>> {
        self.sampling.sampled_rows = 0;
        let r = self.run_batch(batch, None)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.cfg.vocab_size;
        self.gpu
            .argmax_rows(&self.acts.logits, vocab, &mut self.argmax, r)?;
        Ok(self.gpu.read(&self.argmax, r)?)
    }

    /// Rows whose attention ran on `prefill_attention`'s tiles so far.
    pub fn prefill_tile_rows(&self) -> usize {
        self.tile_rows
    }

    /// Graph buckets captured so far.
    pub fn graphs_captured(&self) -> usize {
        self.graphs.captured()
    }

    /// Stages the batch (with its sampling inputs, for device sampling), runs it (through a graph
    /// when it is a decode step) and leaves the logits of its `logits_rows` in the first rows of
    /// `acts.logits`; returns how many.
    fn run_batch(
        &mut self,
        batch: &ForwardBatch,
        sampling: Option<&DeviceSampling>,
    ) -> Result<usize> {
        self.gpu.bind()?;
        let Some((n_run, r_run, bucket)) = self.stage(batch, sampling)? else {
            return Ok(0);
        };
        let r = batch.logits_rows.len();
        let Some(b) = bucket else {
            self.run(n_run, r_run)?;
            return Ok(r);
        };
        match self.graphs.step(b) {
            // The bucket's first step runs eagerly: cuBLAS and the driver initialize what they
            // need for these shapes outside a capture.
            GraphStep::Eager | GraphStep::WarmUp(_) => {
                self.run(n_run, r_run)?;
                self.graphs.warmed(b);
                return Ok(r);
            }
            GraphStep::Capture(_) => {
                let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
                self.gpu
                    .stream
                    .begin_capture(mode)
                    .map_err(cuda::Error::from)?;
                let res = self.run(n_run, r_run);
                let g = self.gpu.stream.end_capture(CUgraphInstantiate_flags(0));
                res?;
                let g = g.map_err(cuda::Error::from)?.ok_or_else(|| {
                    cuda::Error::Driver("stream capture produced no graph".into())
                })?;
                self.graphs.insert(b, Graph(g));
            }
            GraphStep::Replay(..) => {}
        }
        let (_, g) = self.graphs.lookup(b).expect("bucket exists");
        g.expect("captured above")
            .0
            .launch()
            .map_err(cuda::Error::from)?;
        Ok(r)
    }

    /// Fills the step's device buffers with one upload. Returns (rows to run, logits rows to
    /// compute, graph bucket), or `None` for an empty batch.
    fn stage(
        &mut self,
        batch: &ForwardBatch,
        sampling: Option<&DeviceSampling>,
    ) -> Result<Option<(usize, usize, Option<usize>)>> {
        let (bs, nb) = (self.block_size, self.num_blocks);
        let st = &mut self.stage;
        batch.plan_into(bs, nb, &mut st.seq_of, &mut st.slot_of)?;
        let n = batch.tokens.len();
        if n == 0 {
            return Ok(None);
        }
        let c = &self.cfg;
        batch.check_tokens(c.vocab_size)?;
        // The RoPE tables cover the model's context.
        if let Some(&pos) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= c.context_len)
        {
            return Err(Error::Batch(format!(
                "position {pos} is past the context of {}",
                c.context_len
            )));
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

        st.tables.clear();
        st.seq_off.clear();
        for seq in batch.seqs {
            let last = batch.positions[seq.rows.end - 1] as usize;
            st.seq_off.push(st.tables.len() as i32);
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
        st.slots.extend(st.slot_of.iter().map(|&s| s as i64));
        st.row_table.clear();
        st.row_table
            .extend(st.seq_of.iter().map(|&s| st.seq_off[s]));
        st.row_ctx.clear();
        st.row_ctx
            .extend(batch.positions.iter().map(|&p| p as i32 + 1));
        st.logit_rows.clear();
        st.logit_rows
            .extend(batch.logits_rows.iter().map(|&x| x as i32));
        // Prefill chunks' attention on tiles; a decode step (one row per sequence, the only
        // kind captured as a graph) plans none, so its launches stay the graph's.
        st.attn
            .plan(batch.seqs.iter().map(|s| s.rows.clone()), c.heads());
        debug_assert!(bucket.is_none() || st.attn.tiles.is_empty());
        let tiled = n - st.attn.paged_rows.len();
        if tiled > 0 {
            if self.tile_rows == 0 {
                eprintln!(
                    "cuda:{}: prefill chunks' attention runs on prefill_attention's tiles (first step: {tiled} of {n} rows in {} tiles)",
                    self.gpu.info.ordinal,
                    st.attn.tiles.len() / 2
                );
            }
            self.tile_rows += tiled;
        }
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

        let s = sampling.copied().unwrap_or_default();
        // Every row run gets an entry (padded rows -1): a replayed graph reads them all.
        st.feed.clear();
        st.feed.extend_from_slice(s.feed);
        st.feed.resize(n_run, -1);
        let need = step_caps(c, bs, n_run, s.edits.len());
        let need = staging::Caps {
            table_cap: need.table_cap.max(st.tables.len()),
            ..need
        };
        if !self.step.upload.layout.holds(need) {
            let caps = staging::Caps {
                rows: need.rows.max(self.step.rows),
                table_cap: need.table_cap.max(self.step.table_cap),
                edits: need.edits.max(self.step.upload.layout.caps.edits),
            };
            // Captured graphs point into the old buffers.
            self.graphs.clear();
            if caps.rows > self.step.rows {
                self.acts = new_acts(&self.gpu, c, caps.rows)?;
                self.argmax = self.gpu.zeros(caps.rows)?;
            }
            let fp8 = self.step.fp8.is_some();
            let old = std::mem::replace(&mut self.step, new_step(&self.gpu, c, caps, fp8)?);
            // The last step's sampled tokens, which this step's feed may read.
            let s = &self.gpu.stream;
            let keep = old.sampled.len().min(self.step.sampled.len());
            s.memcpy_dtod(
                &old.sampled.slice(..keep),
                &mut self.step.sampled.slice_mut(..keep),
            )
            .map_err(cuda::Error::from)?;
            s.synchronize().map_err(cuda::Error::from)?;
        }
        let (g, l, st) = (&self.gpu, self.step.upload.layout, &self.stage);
        self.step.upload.upload(g, |p| {
            p.put(l.tokens, &st.tokens)?;
            p.put(l.positions, &st.positions)?;
            p.put(l.slots, &st.slots)?;
            p.put(l.row_table, &st.row_table)?;
            p.put(l.row_ctx, &st.row_ctx)?;
            p.put(l.logit_rows, &st.logit_rows)?;
            p.put(l.feed, &st.feed)?;
            p.put(l.params, s.params)?;
            p.put(l.edits, s.edits)?;
            p.put(l.tiles, &st.attn.tiles)?;
            p.put(l.attn_rows, &st.attn.paged_rows)?;
            p.put(l.tables, &st.tables)
        })?;
        Ok(Some((n_run, r_run, bucket)))
    }

    /// The launches of one forward pass over `n` staged rows, `r` of them producing logits.
    /// Nothing here synchronizes or allocates, so it can be captured as a graph.
    fn run(&mut self, n: usize, r: usize) -> Result<()> {
        // Async scheduling: fed rows take the last step's sampled tokens before the embedding.
        let st = &mut self.step;
        self.gpu
            .feed_tokens(&mut st.tokens, &st.feed, &st.sampled, n)?;
        let mut ops = CudaOps {
            gpu: &self.gpu,
            n,
            r,
            step: &mut self.step,
            ropes: &self.ropes,
            kv: &mut self.kv,
            block_size: self.block_size,
            attn: self.stage.attn.split(),
        };
        Ok(forward(&self.cfg, &self.weights, &mut ops, &mut self.acts)?)
    }
}

/// What `model` will take on the device under `cfg`, before anything is allocated: its matrices
/// as they will be stored (bf16, or FP8 codes and a scale for the layers' matrices), f32 vectors,
/// then [`device_footprint`].
fn footprint(model: &Model, cfg: &CudaConfig) -> Result<memory::Footprint> {
    let c = &model.cfg;
    let fp8 = model.gpu_weights == GpuWeights::Fp8;
    let tables = model
        .ropes()
        .iter()
        .map(|r| 8 * r.half() * c.context_len)
        .sum();
    if let Some(d) = model.device_dummy {
        let w = llama_weight_bytes(c, d.tied_embeddings, model.gpu_weights);
        return device_footprint(c, w, tables, fp8, cfg);
    }
    let bytes = Cell::new(0usize);
    let _ = model.weights().try_map_roles(
        &mut |role, w: &Weight| -> std::result::Result<(), ()> {
            let n = w.rows() * w.cols();
            let b = if fp8 && role == MatrixRole::Layer {
                n + 4
            } else {
                2 * n
            };
            bytes.set(bytes.get() + b);
            Ok(())
        },
        &mut |v: &Vec<f32>| {
            bytes.set(bytes.get() + 4 * v.len());
            Ok(())
        },
    );
    device_footprint(c, bytes.get(), tables, fp8, cfg)
}

/// Bytes of a Llama-shaped model's weights on the device (no biases, no extra norms; `tied`:
/// no separate output matrix): what the layer matrices take as `w`, the embedding and output
/// matrices in bf16, the norms in f32.
pub fn llama_weight_bytes(c: &ModelConfig, tied: bool, w: GpuWeights) -> usize {
    let layer_params = c.dim * (c.q_dim() + 2 * c.kv_dim()) // wqkv
        + c.dim * c.q_dim() // wo
        + 2 * c.ffn_dim * c.dim // gate | up
        + c.dim * c.ffn_dim; // down
    let layer = match w {
        GpuWeights::Bf16 => 2 * layer_params,
        GpuWeights::Fp8 => layer_params + 4 * 4,
    } + 4 * 2 * c.dim;
    let embed = 2 * c.vocab_size * c.dim * if tied { 1 } else { 2 };
    c.n_layers * layer + embed + 4 * c.dim
}

/// What a model of shape `c` takes on the device under `cfg` given its weights' and RoPE
/// tables' bytes: plus the activations of `max_batch_tokens` rows (as [`new_acts`] and
/// [`new_step`] make them, the FP8 products' input included) and the smallest KV pool (2 blocks
/// and the scratch block, at the pool's bytes per value).
pub fn device_footprint(
    c: &ModelConfig,
    weights: usize,
    tables: usize,
    fp8_weights: bool,
    cfg: &CudaConfig,
) -> Result<memory::Footprint> {
    let rows = cfg.max_batch_tokens.max(1);
    let per_row = 4 * c.dim * 2
        + 2 * c.dim * 2
        + 4 * (c.q_dim() + 2 * c.kv_dim())
        + 2 * c.q_dim()
        + 4 * 2 * c.ffn_dim
        + 2 * c.ffn_dim
        + 4 * c.vocab_size
        // `sample_rows`' scratch row.
        + 4 * c.vocab_size
        + if fp8_weights { fp8_cols(c) + 4 } else { 0 };
    let kv = cfg.kv_elem_bytes()?;
    Ok(memory::Footprint {
        weights,
        activations: rows * per_row,
        tables,
        kv_min: 3 * memory::bytes_per_block(c.n_layers, c.kv_dim(), cfg.block_size, kv),
    })
}

/// The step's device inputs for `caps`, with the FP8 products' scratch when `fp8`.
fn new_step(gpu: &Gpu, c: &ModelConfig, caps: staging::Caps, fp8: bool) -> Result<DevStep> {
    let mut step = DevStep::new(gpu, caps, c.dim, c.heads())?;
    if fp8 {
        step.fp8 = Some(Fp8Scratch::new(gpu, caps.rows, fp8_cols(c))?);
    }
    Ok(step)
}

/// The widest input of a layer's products (the FP8 scratch's row).
fn fp8_cols(c: &ModelConfig) -> usize {
    c.dim.max(c.q_dim()).max(c.ffn_dim)
}

/// Capacities of a step's upload: `rows` rows, block-table entries for `rows` sequences of the
/// full context plus the scratch table, and `edits` sampling edits (at least 64 a row).
fn step_caps(c: &ModelConfig, block_size: usize, rows: usize, edits: usize) -> staging::Caps {
    staging::Caps {
        rows,
        table_cap: rows * c.context_len.div_ceil(block_size) + 1,
        edits: edits.max(64 * rows),
    }
}

fn tracing_line(gpu: &Gpu, c: &ModelConfig, num_blocks: usize, cfg: &CudaConfig, wb: usize) {
    eprintln!(
        "cuda:{} {} (sm_{}{}): weights {:.2} GiB, KV pool {} blocks of {} tokens ({} tokens, {} layers)",
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
    fn forward(&mut self, batch: &ForwardBatch) -> Result<&mut [f32]> {
        self.sampling.sampled_rows = 0;
        let r = self.run_batch(batch, None)?;
        self.host_logits = self.gpu.read(&self.acts.logits, r * self.cfg.vocab_size)?;
        Ok(&mut self.host_logits)
    }
    fn config(&self) -> &ModelConfig {
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
    fn device_sampler(&mut self) -> Option<&mut dyn DeviceSampler> {
        Some(self)
    }
}

mod sampling;
#[cfg(test)]
mod tests;
mod weights;
