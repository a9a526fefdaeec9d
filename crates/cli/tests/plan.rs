//! `tokenfab plan` end to end: its JSON has bench's fields, `tokenfab economics --from` reads it,
//! and `--device cpu` measures this machine on the real engine first.

mod common;

use common::tokenfab;
use serde_json::Value;

fn num(v: &Value, p: &str) -> f64 {
    v.pointer(p)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {p}"))
}

#[test]
fn h200_plan_json_feeds_economics() {
    let dir = std::env::temp_dir().join(format!("tokenfab-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    let out = tokenfab(&[
        "plan",
        "--device",
        "h200",
        "--model",
        "llama3-70b",
        "--weight-dtype",
        "fp8",
        "--kv-cache-dtype",
        "fp8",
        "--max-num-batched-tokens",
        "8192",
        "--max-num-seqs",
        "512",
        "--concurrency",
        "64",
        "--num-prompts",
        "128",
        "--slo",
        "ttft=2000,tpot=100",
        "--capacity",
        "--capacity-max",
        "1024",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON on stdout");
    let run = v.pointer("/targets/0/runs/0").unwrap();
    assert_eq!(run["concurrency"], 64);
    assert_eq!(run["completed"], 128);
    assert!(num(run, "/output_tokens_per_s") > 0.0);
    assert!(num(run, "/ttft/p50") > 0.0 && num(run, "/tpot/p50") > 0.0);
    // 64 users of 70B in FP8 fit the SLO easily; the capacity search goes further.
    let users = num(&v, "/targets/0/capacity/users");
    assert!(users >= 64.0, "{users}");
    assert_eq!(v.pointer("/plan/device/name").unwrap(), "NVIDIA H200 SXM");
    assert!(!v["plan"]["assumptions"].as_array().unwrap().is_empty());
    std::fs::write(&path, &out).unwrap();
    let econ = tokenfab(&[
        "economics",
        "--from",
        path.to_str().unwrap(),
        "--hardware-cost",
        "40000",
        "--price-per-mtok",
        "0.79",
    ]);
    assert!(econ.contains("capacity point"), "{econ}");
    assert!(econ.contains("revenue per dollar of hardware"), "{econ}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cpu_plan_measures_this_machine() {
    // The tiny preset with Q8_0 dummy weights: every micro-benchmark and the real-engine run,
    // then a plan from the measured device.
    let dir = std::env::temp_dir().join(format!("tokenfab-plan-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = dir.join("cpu.json");
    let out = tokenfab(&[
        "plan",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--weight-dtype",
        "q8_0",
        "--save-device",
        dev.to_str().unwrap(),
        "--concurrency",
        "1,4",
        "--num-prompts",
        "8",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&dev).unwrap()).unwrap();
    assert!(num(&d, "/mem_bw") > 1e8, "{d}");
    assert_eq!(d["measured"]["model"], "tiny");
    assert!(d["widens_to_f32"].as_bool().unwrap());
    assert!(v["plan"]["products"].as_str().unwrap().contains("measured"));
    let runs = v["targets"][0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs
        .iter()
        .all(|r| r["completed"] == 8 && r["output_tokens"] == 64));
    // The saved device plans again without measuring.
    let again = tokenfab(&[
        "plan",
        "--device",
        dev.to_str().unwrap(),
        "--model",
        "tiny",
        "--weight-dtype",
        "q8_0",
        "--concurrency",
        "4",
        "--num-prompts",
        "8",
        "--input-len",
        "16",
        "--output-len",
        "8",
    ]);
    assert!(again.contains("PREDICTED"), "{again}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plan_refuses_what_it_cannot_model() {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tokenfab"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&["plan", "--device", "h200", "--model", "llama3-8b"]);
    assert!(e.contains("--weight-dtype"), "{e}");
    let e = run(&[
        "plan",
        "--device",
        "h200",
        "--model",
        "llama3-70b",
        "--weight-dtype",
        "bf16",
    ]);
    assert!(e.contains("raise --tp"), "{e}");
    let e = run(&[
        "plan",
        "--device",
        "tpu",
        "--model",
        "llama3-8b",
        "--weight-dtype",
        "bf16",
    ]);
    assert!(e.contains("h100, h200, b200"), "{e}");
    let e = run(&[
        "plan",
        "--device",
        "h200",
        "--model",
        "llama3-8b",
        "--weight-dtype",
        "bf16",
        "--tp",
        "3",
    ]);
    assert!(e.contains("`--tp` must divide"), "{e}");
}
