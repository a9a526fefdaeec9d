use super::super::kernels::{KERNELS, SOURCE};
use super::*;

const LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'argmax_rows' for 'sm_90'
ptxas info    : Function properties for argmax_rows
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 15 registers, used 1 barriers, 8192 bytes smem
ptxas info    : Compile time = 18.376 ms
ptxas info    : Compiling entry function 'paged_attention' for 'sm_90'
ptxas info    : Function properties for paged_attention
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 45 registers, used 1 barriers, 16 bytes cumulative stack size, 4352 bytes smem
";

#[test]
fn parses_ptxas_reports() {
    let r = parse_ptxas_log(LOG);
    assert_eq!(
        r,
        vec![
            KernelReport {
                name: "argmax_rows".into(),
                arch: "sm_90".into(),
                registers: 15,
                local_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 8192,
            },
            KernelReport {
                name: "paged_attention".into(),
                arch: "sm_90".into(),
                registers: 45,
                local_bytes: 16,
                spill_stores: 8,
                spill_loads: 4,
                shared_bytes: 4352,
            },
        ]
    );
    assert!(r[1].to_string().contains("45 regs"), "{}", r[1]);
}

#[test]
fn check_names_missing_spilling_and_local_memory_kernels() {
    let r = parse_ptxas_log(LOG);
    check_reports(&r, &["argmax_rows"], "sm_90").unwrap();
    let e = check_reports(&r, &["argmax_rows", "glu"], "sm_90")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`glu` is not in"), "{e}");
    let e = check_reports(&r, &["paged_attention"], "sm_90")
        .unwrap_err()
        .to_string();
    assert!(e.contains("spills"), "{e}");
    let mut no_spill = r.clone();
    no_spill[1].spill_stores = 0;
    no_spill[1].spill_loads = 0;
    let e = check_reports(&no_spill, &["paged_attention"], "sm_90")
        .unwrap_err()
        .to_string();
    assert!(e.contains("local memory"), "{e}");
    // A report for another architecture does not count.
    assert!(check_reports(&r, &["argmax_rows"], "sm_80").is_err());
}

/// Every NVRTC found here, or a line saying the compile checks were skipped.
fn libraries() -> Vec<Nvrtc> {
    let libs: Vec<Nvrtc> = candidates()
        .iter()
        .filter_map(|p| Nvrtc::open(p).ok())
        .collect();
    if libs.is_empty() {
        eprintln!(
            "skipped: no NVRTC library found (pip install --no-deps nvidia-cuda-nvrtc==13.5.37 \
             nvidia-cuda-nvrtc-cu12==12.9.86, or set TOKENFAB_NVRTC)"
        );
    }
    libs
}

/// Every kernel compiles for Ampere and Hopper with every NVRTC found, with no warning, no
/// register spill and no local memory, and the cubin holds each launched kernel.
#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    for lib in libraries() {
        for arch in ["sm_80", "sm_90"] {
            let c = lib
                .compile(SOURCE, arch, &[])
                .unwrap_or_else(|e| panic!("{}: {e}", lib.path.display()));
            assert!(c.cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
            for k in KERNELS {
                let found = c
                    .cubin
                    .windows(k.len() + 1)
                    .any(|w| w[..k.len()] == *k.as_bytes() && w[k.len()] == 0);
                assert!(found, "{arch}: kernel `{k}` is not in the cubin");
            }
            check_reports(&c.kernels, KERNELS, arch).unwrap();
            eprintln!("NVRTC {:?} {arch}: {} bytes", lib.version, c.cubin.len());
        }
    }
}

/// What the check must refuse, on every NVRTC found: a compile error (naming the architecture),
/// a warning (NVRTC 12 has no -Werror), and an array indexed at run time (local memory).
#[test]
fn errors_warnings_and_local_memory_are_refused() {
    for lib in libraries() {
        let e = lib
            .compile(
                "extern \"C\" __global__ void k() { int x = ; }",
                "sm_90",
                &[],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("sm_90") && e.contains("error"), "{e}");
        let unused = "extern \"C\" __global__ void k(float* o) { int x = 3; o[0] = 1.0f; }";
        let e = lib.compile(unused, "sm_90", &[]).unwrap_err().to_string();
        assert!(e.contains("never referenced"), "{:?}: {e}", lib.version);
        let local = "extern \"C\" __global__ void k(float* o, int n, int i) {
            float f[4];
            for (int j = 0; j < n; j++) f[j] = o[j];
            o[0] = f[i];
        }";
        let c = lib.compile(local, "sm_90", &[]).unwrap();
        assert_eq!(c.kernels.len(), 1, "{}", c.log);
        let e = check_reports(&c.kernels, &["k"], "sm_90")
            .unwrap_err()
            .to_string();
        assert!(e.contains("local memory"), "{e}");
    }
}

#[test]
fn a_missing_library_is_an_error_not_a_panic() {
    let e = Nvrtc::open(Path::new("/nonexistent/libnvrtc.so.13"))
        .err()
        .expect("no library there")
        .to_string();
    assert!(e.contains("/nonexistent/libnvrtc.so.13"), "{e}");
}
