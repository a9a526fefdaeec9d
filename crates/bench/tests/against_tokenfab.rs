//! `tokenfab bench` against a real tokenfab server started in this process (tiny random model):
//! the load generator and the server agree on what was sent and produced.

use std::time::Duration;

use tokenfab_bench::client::Endpoint;
use tokenfab_bench::runner::{Bound, Load};
use tokenfab_bench::slo::Slo;
use tokenfab_bench::suite::{run_bench, BenchConfig};
use tokenfab_bench::workload::PromptSource;
use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{EngineConfig, EngineHandle, LoadedModel};
use tokenfab_server::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_real_tokenfab_server() {
    let dir = std::env::temp_dir().join(format!("tokenfab-bench-real-{}", std::process::id()));
    let m = LoadedModel::load(&write_tiny_model(&dir)).unwrap();
    let engine = EngineHandle::start(m, EngineConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokenfab_server::serve(
        listener,
        engine.clone(),
        ServerConfig::new("tiny"),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    let cfg = BenchConfig {
        url: url.clone(),
        model: None,
        compare_url: None,
        compare_model: None,
        endpoint: Endpoint::Completions,
        loads: vec![Load::Concurrency(1), Load::Concurrency(4)],
        bound: Bound {
            num_prompts: Some(8),
            duration: None,
        },
        source: PromptSource::Synthetic {
            input_len: 24,
            output_len: 10,
        },
        ignore_eos: true,
        seed: 3,
        warmup: 1,
        slo: Some(Slo::parse("ttft=60000,tpot=60000").unwrap()),
        attainment: 0.9,
        capacity_max: None,
        rounds: 1,
        timeout: Duration::from_secs(60),
        progress: false,
        profile: true,
    };
    let rep = run_bench(&cfg).await.unwrap();
    let t = &rep.targets[0];
    assert_eq!(t.model, "tiny", "the model id comes from /v1/models");
    assert!(
        rep.workload.exact_lengths,
        "prompts were built with the server's /tokenize"
    );
    for run in &t.runs {
        assert_eq!((run.completed, run.failed), (8, 0), "{run:?}");
        assert_eq!(run.input_tokens, 8 * 24, "exact prompt lengths");
        assert_eq!(
            run.output_tokens,
            8 * 10,
            "ignore_eos gives exactly output_len tokens"
        );
        assert!(run.ttft.p50 > 0.0 && run.e2e.p99 >= run.e2e.p50 && run.e2e.p50 >= run.ttft.p50);
        assert!(run.output_tokens_per_s > 0.0);
        assert_eq!(
            run.goodput.as_ref().unwrap().share,
            1.0,
            "a generous SLO is met by all"
        );
        // The server's own account: every request took a prefill step and 9 decode steps at
        // least once, the forward pass and the SSE frames took CPU time.
        let p = run
            .profile
            .as_ref()
            .expect("a tokenfab server has phase metrics");
        assert!(p.steps >= 10.0, "{p:?}");
        let cpu = |name: &str| p.phases.iter().find(|x| x.phase == name).unwrap().cpu_s;
        assert!(
            cpu("forward") > 0.0 && cpu("http") > 0.0 && cpu("sample") > 0.0,
            "{p:?}"
        );
        assert!(p.process_cpu_s >= p.phases.iter().map(|x| x.cpu_s).sum::<f64>() * 0.9);
        assert!(p.spec.is_none(), "no speculative config");
    }
    assert!(tokenfab_bench::report::render(&rep).contains("server profile at c=4"));
    // The server counted the same tokens (warm-up requests included).
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let generated: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tokenfab:generation_tokens_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        generated as usize,
        2 * 8 * 10 + 10,
        "2 runs of 8 and the one warm-up request"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    engine.shutdown(Duration::from_secs(5));
}
