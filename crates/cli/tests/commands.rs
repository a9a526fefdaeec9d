//! `generate`, `chat`, `score`, `perplexity` and `gpu-probe` as a user runs them, on
//! `--dummy-weights tiny` (byte-level vocabulary: a token per byte, ChatML specials; context 512),
//! and the log format on stderr.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs the binary with `args`, `stdin` piped in, `RUST_LOG` as given.
fn run(args: &[&str], stdin: &str, rust_log: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tokenfab");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: &str, rust_log: &str) -> (String, String) {
    let o = run(args, stdin, rust_log);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "tokenfab {args:?} failed: {err}");
    (out, err)
}

const TINY: [&str; 4] = ["--dummy-weights", "tiny", "--device", "cpu"];

fn with_tiny<'a>(cmd: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend_from_slice(&TINY);
    v.extend_from_slice(rest);
    v
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tokenfab-cmd-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn generate_is_deterministic_and_logs_plain_text_or_json() {
    let args = with_tiny(
        "generate",
        &[
            "-p",
            "hello",
            "-n",
            "8",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ],
    );
    let (out, err) = ok(&args, "", "info");
    let j: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(j["prompt_tokens"], 5);
    assert_eq!(j["tokens"].as_array().unwrap().len(), 8);
    assert_eq!(j["device"], "cpu");
    assert!(
        out.starts_with(j["text"].as_str().unwrap()),
        "streamed text first"
    );
    assert!(err.contains("model loaded"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes in a pipe: {err:?}");
    let (again, _) = ok(&args, "", "info");
    let j2: Value = serde_json::from_str(again.lines().last().unwrap()).unwrap();
    assert_eq!(j2["tokens"], j["tokens"], "temperature 0 is deterministic");

    // The first token's whole distribution, by token id.
    let dir = temp_dir("dump");
    let dump = dir.join("lp.f32");
    let mut dump_args = args.clone();
    dump_args.extend(["--dump-logprobs", dump.to_str().unwrap()]);
    ok(&dump_args, "", "warn");
    let bytes = std::fs::read(&dump).unwrap();
    let lps: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(lps.len(), 300);
    let total: f64 = lps.iter().map(|&l| (l as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
    let first = j["tokens"][0].as_u64().unwrap() as usize;
    assert!(
        lps.iter().all(|&l| l <= lps[first]),
        "greedy took the most likely token"
    );
    std::fs::remove_dir_all(&dir).ok();

    let mut json_args = args.clone();
    json_args.extend(["--log-format", "json"]);
    let (_, err) = ok(&json_args, "", "info");
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "model loaded"));
    assert!(lines.iter().all(|l| l["level"].is_string()));
}

#[test]
fn chat_keeps_the_conversation_in_the_prefix_cache() {
    let args = with_tiny("chat", &["-n", "12", "--temperature", "0"]);
    let (out, err) = ok(
        &args,
        "hi there\nand a second question\n/exit\n",
        "warn,tokenfab::chat=debug",
    );
    assert_eq!(out.matches("> ").count(), 3, "{out}");
    let turns: Vec<(usize, usize)> = err
        .lines()
        .filter(|l| l.contains("turn"))
        .map(|l| {
            let field = |name: &str| -> usize {
                let at = l.find(&format!("{name}=")).unwrap() + name.len() + 1;
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            (field("prompt_tokens"), field("cached_tokens"))
        })
        .collect();
    assert_eq!(turns.len(), 2, "{err}");
    assert_eq!(turns[0].1, 0);
    // The second prompt starts with the first turn, whose full blocks come from the cache.
    assert!(turns[1].0 > turns[0].0 && turns[1].1 >= 16, "{turns:?}");
}

#[test]
fn perplexity_is_the_mean_of_the_scores_of_its_chunks() {
    let dir = temp_dir("ppl");
    let text: String = (0..40)
        .map(|i| format!("line {i} of a small text. "))
        .collect();
    let file = dir.join("text.txt");
    std::fs::write(&file, &text).unwrap();
    let (out, _) = ok(
        &with_tiny(
            "perplexity",
            &["-f", file.to_str().unwrap(), "--ctx", "64", "--chunks", "3"],
        ),
        "",
        "warn",
    );
    let ppl = common::ppl_of(&out);
    // The same positions through `score`: each chunk's second half given what precedes it (the
    // byte-level vocabulary makes token ids the text's bytes).
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    let rows: Vec<String> = (0..3)
        .map(|c| {
            let chunk = &bytes[c * 64..(c + 1) * 64];
            serde_json::json!({"prompt_tokens": chunk[..33], "tokens": chunk[33..]}).to_string()
        })
        .collect();
    let input = dir.join("rows.jsonl");
    std::fs::write(&input, rows.join("\n")).unwrap();
    let (scores, _) = ok(
        &with_tiny("score", &["-i", input.to_str().unwrap()]),
        "",
        "warn",
    );
    let mut lps = Vec::new();
    for line in scores.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let row: Vec<f64> = serde_json::from_value(r["logprobs"].clone()).unwrap();
        let tops: Vec<f64> = serde_json::from_value(r["top_logprobs"].clone()).unwrap();
        assert_eq!(row.len(), 31);
        assert!(row.iter().zip(&tops).all(|(l, t)| *l <= 0.0 && t >= l));
        lps.extend(row);
    }
    let want = (-lps.iter().sum::<f64>() / lps.len() as f64).exp();
    assert!(
        (ppl - want).abs() / want < 1e-3,
        "perplexity {ppl}, from scores {want}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn score_refuses_a_token_outside_the_vocabulary_naming_the_row() {
    let dir = temp_dir("score");
    let input = dir.join("rows.jsonl");
    std::fs::write(
        &input,
        "{\"prompt_tokens\": [1, 2], \"tokens\": [3]}\n{\"prompt_tokens\": [1], \"tokens\": [300]}\n",
    )
    .unwrap();
    let o = run(
        &with_tiny("score", &["-i", input.to_str().unwrap()]),
        "",
        "warn",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("row 2") && err.contains("`prompt` token ids must be in [0, 300). Given: 300"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Without a usable CUDA device (as where CI runs) the probe says why and exits 1; with one it
/// describes the device.
#[test]
fn gpu_probe_describes_the_device_or_says_why_there_is_none() {
    let o = run(&["gpu-probe"], "", "warn");
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    if o.status.success() {
        assert!(j["device"].as_str().is_some_and(|d| !d.is_empty()), "{j}");
    } else {
        assert_eq!(o.status.code(), Some(1));
        assert!(
            j["device"].is_null() && j["error"].as_str().is_some(),
            "{j}"
        );
        eprintln!("device checks skipped: {}", j["error"]);
    }
}
