//! `tokenfab gpu-probe --compile-kernels`: every kernel compiled by each NVRTC found here, for
//! sm_80 and sm_90, with no warning, spill or local memory. Needs no GPU; skipped (saying so)
//! where no NVRTC library is installed, unless `TOKENFAB_REQUIRE_NVRTC=1` (CI) makes that a
//! failure.

use std::process::{Command, Output};

use tokenfab_engine::gpu_probe::KERNELS;

fn gpu_probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .arg("gpu-probe")
        .args(args)
        .output()
        .expect("run tokenfab")
}

#[test]
fn every_kernel_compiles_with_every_nvrtc_found() {
    let out = gpu_probe(&["--compile-kernels"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() && stderr.contains("no NVRTC library found") {
        assert!(
            std::env::var("TOKENFAB_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "TOKENFAB_REQUIRE_NVRTC=1 but {stderr}"
        );
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let runs: Vec<&str> = stdout.split("NVRTC ").skip(1).collect();
    assert!(!runs.is_empty(), "{stdout}");
    for arch in ["sm_80", "sm_90"] {
        let of_arch: Vec<&&str> = runs
            .iter()
            .filter(|r| r.contains(&format!(" {arch}: ")))
            .collect();
        assert!(!of_arch.is_empty(), "no run for {arch}: {stdout}");
        for run in of_arch {
            assert!(run.trim_end().ends_with("ok"), "{run}");
            for k in KERNELS {
                let line = run
                    .lines()
                    .find(|l| l.split_whitespace().nth(1) == Some(k))
                    .unwrap_or_else(|| panic!("`{k}` not reported for {arch}: {run}"));
                assert!(line.starts_with(&format!("  {arch} ")), "{line}");
                assert!(
                    line.contains(" regs ") && line.contains(" B local"),
                    "{line}"
                );
            }
        }
    }
    eprintln!("{stdout}");
}

#[test]
fn a_library_that_cannot_be_opened_fails_the_check() {
    let out = gpu_probe(&[
        "--compile-kernels",
        "--nvrtc",
        "/nonexistent/libnvrtc.so.13",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("FAILED").count(), 2, "{stdout}");
}

/// Without a device the probe still names the libraries it found (as null when missing).
#[test]
fn the_probe_reports_library_versions() {
    let out = gpu_probe(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    for k in ["driver", "nvrtc", "cublas"] {
        assert!(j["libraries"].get(k).is_some(), "{j}");
    }
    assert_eq!(out.status.success(), !j["device"].is_null(), "{j}");
}
