//! The `openai` Python SDK against a real `tokenfab serve` (scripts/openai-smoke.py).
//! Needs python3 with the `openai` package (`python3 -m pip install openai`).

mod common;
mod serve_common;

use serve_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_smoke() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with the `openai` package is needed for this test: \
             `python3 -m pip install openai` (then rerun)"
        ),
    }
    let _g = serial().await;
    let s = Server::start(&["--api-key", "smoke-key"]);
    wait_ready(&s).await;
    let base = s.url("/v1");
    run_script(
        &s,
        "openai-smoke.py",
        vec![
            "--base-url".into(),
            base,
            "--api-key".into(),
            "smoke-key".into(),
        ],
    )
    .await;
}

/// Structured outputs and tool calls through the SDK (scripts/structured-check.py): a pydantic
/// `parse`, 23 JSON schemas at temperature 0 and 1 validated with `jsonschema`, json_object,
/// regex, choice, and required / named / streamed tool calls with a tool-result round trip.
/// Needs the `openai`, `jsonschema` and `pydantic` packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_outputs_and_tools_through_the_sdk() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai, jsonschema, pydantic"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with `openai`, `jsonschema` and `pydantic` is needed for this test: \
             `python3 -m pip install openai jsonschema pydantic` (then rerun)"
        ),
    }
    let _g = serial().await;
    let s = Server::start(&[]);
    wait_ready(&s).await;
    let base = s.url("/v1");
    run_script(&s, "structured-check.py", vec!["--base-url".into(), base]).await;
    // Masks were computed (and timed) for constrained rows.
    assert!(s.metric("tokenfab:structured_mask_rows_total").await > 0.0);
}

/// Runs `python3 scripts/NAME ARGS...` against the server and fails with both outputs and the
/// server's log unless it succeeds.
async fn run_script(s: &Server, name: &'static str, args: Vec<String>) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(common::root().join("scripts").join(name))
            .args(args)
            .output()
            .expect("running python3")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log_text()
    );
}
