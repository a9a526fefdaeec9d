//! Dummy models made on the GPU against their CPU twins built on the host from the same seed
//! (skipped without a device; `scripts/gpu-check.sh` runs them on one).

use tokenfab_models::testing::worst_rel;
use tokenfab_models::{CudaConfig, CudaExecutor, Executor, ForwardBatch, KvDtype, SeqSlice};

use super::*;

/// The tiny preset on the device, or `None` having said why not.
fn on_device(w: GpuWeights, kv_dtype: KvDtype) -> Option<CudaExecutor> {
    let m = device_model("tiny", 5, w).unwrap().model;
    let cfg = CudaConfig {
        max_batch_tokens: 64,
        max_graph_batch: 8,
        max_blocks: Some(16),
        kv_dtype,
        ..CudaConfig::default()
    };
    match CudaExecutor::new(&m, &cfg) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The CPU twin: the same values built on the host (`values`), f32 matrices, f32 KV.
fn on_cpu(values: DummyValues) -> tokenfab_models::CpuExecutor {
    let cfg = DummyConfig::resolve("tiny").unwrap();
    let g = Gguf::from_bytes(build_gguf_with("tiny", &cfg, 5, GgmlType::F32, values).unwrap());
    let m = Model::from_gguf(&g.unwrap()).unwrap();
    tokenfab_models::CpuExecutor::new(m, KvDtype::F32, 16, 16).unwrap()
}

/// A 20-token prompt, then 4 decode steps; the logits of each.
fn run(e: &mut dyn Executor) -> Vec<Vec<f32>> {
    let table: Vec<u32> = (0..4).collect();
    let mut out = Vec::new();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 % 300) as u32).collect();
    let pos: Vec<u32> = (0..20).collect();
    let seqs = [SeqSlice {
        rows: 0..20,
        block_table: &table,
    }];
    let b = ForwardBatch {
        tokens: &prompt,
        positions: &pos,
        seqs: &seqs,
        logits_rows: &[19],
    };
    out.push(e.forward(&b).unwrap().to_vec());
    for s in 0..4u32 {
        let seqs = [SeqSlice {
            rows: 0..1,
            block_table: &table,
        }];
        let b = ForwardBatch {
            tokens: &[s * 7 + 1],
            positions: &[20 + s],
            seqs: &seqs,
            logits_rows: &[0],
        };
        out.push(e.forward(&b).unwrap().to_vec());
    }
    out
}

/// bf16 weights made on the device are the host dummy's values rounded to bf16: the pass
/// tracks the CPU's f32 pass as closely as uploaded bf16 weights do.
#[test]
fn device_bf16_dummy_tracks_its_host_twin() {
    let Some(mut gpu) = on_device(GpuWeights::Bf16, KvDtype::F16) else {
        return;
    };
    let e = worst_rel(&run(&mut gpu), &run(&mut on_cpu(DummyValues::Uniform)));
    eprintln!("device bf16 dummy vs host f32 twin: {e:.4}");
    assert!(e <= 0.05, "{e}");
}

/// FP8 weights made on the device hold exactly the twin's values; what differs is the FP8
/// quantization of each product's input and of K/V (tolerance fit to FP8).
#[test]
fn device_fp8_dummy_tracks_its_host_twin() {
    let Some(mut gpu) = on_device(GpuWeights::Fp8, KvDtype::F16) else {
        return;
    };
    let mut gpu_kv8 = on_device(GpuWeights::Fp8, KvDtype::Fp8).expect("the device was there");
    let want = run(&mut on_cpu(DummyValues::Fp8));
    let (a, b) = (run(&mut gpu), run(&mut gpu_kv8));
    let (e, e_kv) = (worst_rel(&a, &want), worst_rel(&b, &want));
    eprintln!("device fp8 dummy vs host twin: {e:.4} (bf16 KV), {e_kv:.4} (fp8 KV)");
    assert!(e <= 0.15 && e_kv <= 0.2, "{e} {e_kv}");
}
