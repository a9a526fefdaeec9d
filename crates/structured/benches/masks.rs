//! Mask time per row per step on the default model's vocabulary (SmolLM2, 49,152 tokens):
//! a 20-property JSON schema, its masks computed along the tokens of a valid pretty-printed
//! instance (one row alone, and 64 rows at different positions through `compute_masks`), the
//! mask applied to a logits row, and one uncached compile.
//!
//! `cargo bench -p tokenfab-structured --bench masks`; numbers only mean something on an idle
//! machine.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde_json::{json, Value};
use tokenfab_loader::{Gguf, Tokenizer};
use tokenfab_structured::{compute_masks, Constraint, Grammars, Limits};

/// Twenty properties of the kinds clients send: strings with lengths, patterns and formats,
/// integers and numbers with ranges, enums, booleans, arrays, a nested object, a nullable.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string", "maxLength": 40},
            "email": {"type": "string", "format": "email"},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "city": {"type": "string"},
            "country": {"enum": ["FR", "DE", "US", "JP", "BR"]},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "phone": {"type": "string", "pattern": "^\\+[0-9]{6,14}$"},
            "active": {"type": "boolean"},
            "score": {"type": "number", "minimum": 0, "maximum": 100},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
            "role": {"enum": ["admin", "editor", "viewer"]},
            "created": {"type": "string", "format": "date"},
            "notes": {"type": ["string", "null"], "maxLength": 80},
            "visits": {"type": "integer", "minimum": 0},
            "ratio": {"type": "number"},
            "address": {"type": "object", "properties": {
                "street": {"type": "string"}, "number": {"type": "integer"}
            }, "required": ["street", "number"], "additionalProperties": false},
            "languages": {"type": "array", "items": {"enum": ["en", "fr", "de", "ja"]}, "minItems": 1},
            "verified": {"type": "boolean"},
            "level": {"type": "integer", "minimum": 1, "maximum": 5}
        },
        "required": ["id", "name", "email", "age", "city", "country", "zip", "phone", "active",
            "score", "tags", "role", "created", "notes", "visits", "ratio", "address",
            "languages", "verified", "level"],
        "additionalProperties": false
    })
}

fn instance() -> Value {
    json!({
        "id": "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c", "name": "Ada Lovelace",
        "email": "ada@example.org", "age": 36, "city": "London", "country": "FR",
        "zip": "75001", "phone": "+33123456789", "active": true, "score": 87.5,
        "tags": ["math", "poetry"], "role": "editor", "created": "2024-02-29",
        "notes": "First programmer; wrote notes on the Analytical Engine.", "visits": 12,
        "ratio": 0.25, "address": {"street": "St James's Square", "number": 12},
        "languages": ["en", "fr"], "verified": false, "level": 3
    })
}

fn tokenizer() -> Arc<Tokenizer> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let gguf = Gguf::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-model.sh first)", path.display()));
    Arc::new(Tokenizer::from_gguf(&gguf).unwrap())
}

fn main() {
    let tok = tokenizer();
    let n = tok.vocab_size();
    let grammars = Grammars::new(tok.clone(), n, Limits::default()).unwrap();
    let c = Constraint::JsonSchema {
        schema: schema(),
        strict: true,
    };
    let compiled = grammars.compile(&c).unwrap();
    // The instance's tokens as a model following the grammar would write them: at each step
    // the longest allowed token that continues the text, then EOS.
    let text = serde_json::to_string_pretty(&instance()).unwrap();
    let mut steps = Vec::new();
    let mut m = compiled.matcher();
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        let mask = m.compute_mask().unwrap();
        let t = mask
            .allowed()
            .into_iter()
            .filter(|&t| !tok.token_piece(t).is_empty() && rest.starts_with(tok.token_piece(t)))
            .max_by_key(|&t| tok.token_piece(t).len())
            .unwrap_or_else(|| {
                panic!(
                    "no allowed token continues {:?}",
                    String::from_utf8_lossy(rest)
                )
            });
        m.consume(t).unwrap();
        rest = &rest[tok.token_piece(t).len()..];
        steps.push(t);
    }
    assert!(m.is_accepting());
    println!(
        "schema: 20 properties; instance: {} tokens; vocabulary {n}; rayon threads {}",
        steps.len(),
        rayon::current_num_threads()
    );

    let mut cr = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = cr.benchmark_group("masks");

    // One row: the time of one mask, averaged over every position of the instance.
    g.throughput(Throughput::Elements(1));
    let fresh = || compiled.matcher();
    g.bench_function("one_row_per_step", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut m = compiled.matcher();
            for i in 0..iters as usize {
                let step = i % steps.len();
                if step == 0 {
                    m = fresh();
                }
                let t0 = Instant::now();
                black_box(m.compute_mask().unwrap());
                spent += t0.elapsed();
                m.consume(steps[step]).unwrap();
            }
            spent
        })
    });

    // 64 rows at spread positions, all masks of a step in parallel (rayon): per step.
    const ROWS: usize = 64;
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("64_rows_per_step", |b| {
        b.iter_custom(|iters| {
            let mut rows: Vec<_> = (0..ROWS).map(|_| fresh()).collect();
            let mut pos: Vec<usize> = (0..ROWS).map(|r| r * steps.len() / ROWS).collect();
            for (m, &p) in rows.iter_mut().zip(&pos) {
                for &t in &steps[..p] {
                    m.consume(t).unwrap();
                }
            }
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut refs: Vec<_> = rows.iter_mut().collect();
                let t0 = Instant::now();
                let res = compute_masks(&mut refs);
                spent += t0.elapsed();
                assert!(res.iter().all(Result::is_ok));
                for (r, (m, p)) in rows.iter_mut().zip(pos.iter_mut()).enumerate() {
                    if *p == steps.len() {
                        *m = fresh();
                        *p = r % 7;
                        for &t in &steps[..*p] {
                            m.consume(t).unwrap();
                        }
                    } else {
                        m.consume(steps[*p]).unwrap();
                        *p += 1;
                    }
                }
            }
            spent
        })
    });

    g.throughput(Throughput::Elements(n as u64));
    let mut m = compiled.matcher();
    let mask = m.compute_mask().unwrap().clone();
    let mut logits = vec![0.5f32; n];
    g.bench_function("apply_to_logits_row", |b| {
        b.iter(|| mask.apply(black_box(&mut logits)))
    });

    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    let uncached = Grammars::new(
        tok,
        n,
        Limits {
            cache_entries: 0,
            ..Limits::default()
        },
    )
    .unwrap();
    g.bench_function("compile_20_property_schema", |b| {
        b.iter(|| black_box(uncached.compile(&c).unwrap()))
    });
    g.finish();
    cr.final_summary();
}
