//! The plan as text: what it rests on, then `tokenfab bench`'s tables of the predicted runs.

use std::fmt::Write;

use tokenfab_bench::report::table;

use crate::run::PlanReport;

fn ms(s: f64) -> String {
    format!("{:.3}", s * 1e3)
}

/// The whole plan as text, labelled as model output.
pub fn render(r: &PlanReport) -> String {
    let p = &r.plan;
    let m = &p.model;
    let mut out = format!(
        "PREDICTED by the cost model (not measured): {} x{}, model {} ({} weights, {} KV cache)\n",
        p.device.name, p.tp, m.name, m.weight_dtype, p.kv_cache_dtype
    );
    let _ = writeln!(out, "device: {}", p.device.source);
    let _ = writeln!(out, "products: {}", p.products);
    let s = &p.scheduler;
    let _ = writeln!(
        out,
        "engine: {} tokens per step, {} sequences, KV pool {} tokens ({} blocks of {}), prefix caching {}",
        s.max_num_batched_tokens,
        s.max_num_seqs,
        s.kv_cache_tokens,
        s.num_blocks,
        s.block_size,
        if s.enable_prefix_caching { "on" } else { "off" }
    );
    let rows: Vec<Vec<String>> = p
        .reference_steps
        .iter()
        .map(|x| {
            let c = &x.cost;
            vec![
                x.step.clone(),
                ms(c.seconds),
                ms(c.layers_s),
                ms(c.lm_head_s),
                ms(c.attention_s),
                ms(c.all_reduce_s),
                ms(c.fixed_s),
            ]
        })
        .collect();
    out += "\n";
    out += &table(
        &[
            "step (ms)",
            "total",
            "layers",
            "output",
            "attention",
            "all-reduce",
            "fixed",
        ],
        &rows,
    );
    out += "\nassumptions:\n";
    for a in &p.assumptions {
        let _ = writeln!(out, "  - {a}");
    }
    let e = &p.engine;
    let _ = writeln!(
        out,
        "simulated {} steps ({:.1} virtual s, {} tokens, {} preemptions) in {:.3} s\n",
        e.steps, e.busy.seconds, e.tokens, e.preemptions, p.wall_s
    );
    out += &tokenfab_bench::report::render(&r.bench);
    out
}
