//! The readable tables printed at the end of a run.

use std::fmt::Write;

use crate::metrics::RunMetrics;
use crate::stats::Summary;
use crate::suite::{BenchReport, RatioRow};

/// Lays out rows under headers, first column left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    out += &line(
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn f(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn throughput_rows(runs: &[RunMetrics]) -> Vec<Vec<String>> {
    runs.iter()
        .map(|m| {
            let errs = m
                .errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let good = m.goodput.map_or("-".into(), |g| {
                format!("{:.0}% {} req/s", g.share * 100.0, f(g.request_rate))
            });
            vec![
                m.load_label(),
                m.completed.to_string(),
                if errs.is_empty() { "0".into() } else { errs },
                f(m.duration_s),
                f(m.request_throughput),
                f(m.output_tokens_per_s),
                f(m.total_tokens_per_s),
                good,
            ]
        })
        .collect()
}

fn latency_rows(runs: &[RunMetrics]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for m in runs {
        let metrics: [(&str, &Summary); 4] = [
            ("TTFT", &m.ttft),
            ("TPOT", &m.tpot),
            ("ITL", &m.itl),
            ("E2E", &m.e2e),
        ];
        for (i, (name, s)) in metrics.iter().enumerate() {
            let load = if i == 0 {
                m.load_label()
            } else {
                String::new()
            };
            rows.push(vec![
                load,
                name.to_string(),
                f(s.mean),
                f(s.p50),
                f(s.p90),
                f(s.p99),
            ]);
        }
    }
    rows
}

/// The whole report as text: per server, throughput and latency tables, then capacity and the
/// A/B ratios.
pub fn render(report: &BenchReport) -> String {
    let w = &report.workload;
    let mut out = format!(
        "workload: {} prompts on /{}, input {:.0} tokens{}, output {:.0} tokens{}, seed {}, {} round(s)\n",
        w.prompts,
        if w.endpoint == "chat" { "v1/chat/completions" } else { "v1/completions" },
        w.mean_input_len,
        if w.exact_lengths { "" } else { " (estimated: no /tokenize)" },
        w.mean_output_len,
        if w.ignore_eos { " (ignore_eos)" } else { "" },
        w.seed,
        w.rounds,
    );
    for t in &report.targets {
        let _ = writeln!(out, "\n== {} {} (model {}) ==", t.label, t.url, t.model);
        let h = [
            "load",
            "ok",
            "errors",
            "time s",
            "req/s",
            "out tok/s",
            "total tok/s",
            "goodput",
        ];
        out += &table(&h, &throughput_rows(&t.runs));
        out += "\n";
        out += &table(
            &["load", "ms", "mean", "p50", "p90", "p99"],
            &latency_rows(&t.runs),
        );
        for m in &t.runs {
            if let Some(p) = &m.profile {
                out += &p.render(&m.load_label());
            }
        }
        if let Some(c) = &t.capacity {
            let slo = format!(
                "ttft<={} ms, tpot<={} ms, {:.0}% of requests",
                c.slo.ttft_ms.map_or("-".into(), f),
                c.slo.tpot_ms.map_or("-".into(), f),
                c.attainment * 100.0
            );
            let _ = match c.users {
                Some(u) => writeln!(
                    out,
                    "\ncapacity ({slo}): {u}{} users at {} output tok/s in total, {} tok/s per user",
                    if c.hit_max { "+ (search cap reached)" } else { "" },
                    f(c.output_tokens_per_s),
                    f(c.per_user_tokens_per_s)
                ),
                None => writeln!(out, "\ncapacity ({slo}): not even 1 user meets the SLO"),
            };
            out += &table(
                &[
                    "probe",
                    "ok",
                    "errors",
                    "time s",
                    "req/s",
                    "out tok/s",
                    "total tok/s",
                    "goodput",
                ],
                &throughput_rows(&c.probes),
            );
        }
    }
    if !report.ratios.is_empty() {
        out += "\n== A / B ==\n";
        out += &ratio_table(&report.ratios);
    }
    out
}

pub fn ratio_table(rows: &[RatioRow]) -> String {
    let h = [
        "load",
        "out tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "ITL p50",
        "E2E p50",
    ];
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let x = |v: f64| {
                if v.is_nan() {
                    "-".into()
                } else {
                    format!("{v:.2}x")
                }
            };
            vec![
                r.load.clone(),
                x(r.output_tokens_per_s),
                x(r.request_throughput),
                x(r.ttft_p50),
                x(r.ttft_p99),
                x(r.tpot_p50),
                x(r.itl_p50),
                x(r.e2e_p50),
            ]
        })
        .collect();
    table(&h, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "a    bb\n---  --\nxyz   1\nq    22\n");
    }
}
