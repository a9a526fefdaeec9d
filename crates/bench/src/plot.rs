//! `--plot FILE.svg`: throughput and latency against load, one line per server.

use std::path::Path;

use plotters::prelude::*;

use crate::metrics::RunMetrics;
use crate::suite::BenchReport;
use crate::BenchError;

type Getter = fn(&RunMetrics) -> f64;

/// Three panels side by side: output tokens/s, TTFT (p50, p99) and TPOT (p50, p99), each
/// against concurrency (or request rate for open-loop runs).
pub fn plot_svg(report: &BenchReport, path: &Path) -> Result<(), BenchError> {
    draw(report, path).map_err(|e| BenchError::Plot(format!("{}: {e}", path.display())))
}

fn x_of(m: &RunMetrics) -> f64 {
    m.concurrency
        .map(|c| c as f64)
        .or(m.request_rate_target)
        .unwrap_or(0.0)
}

fn draw(report: &BenchReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let by_rate = report
        .targets
        .iter()
        .flat_map(|t| &t.runs)
        .all(|m| m.concurrency.is_none());
    let x_desc = if by_rate {
        "request rate (req/s)"
    } else {
        "concurrent users"
    };
    let panels: [(&str, &[(&str, Getter)]); 3] = [
        ("output tokens/s", &[("", |m| m.output_tokens_per_s)]),
        (
            "TTFT (ms)",
            &[(" p50", |m| m.ttft.p50), (" p99", |m| m.ttft.p99)],
        ),
        (
            "TPOT (ms)",
            &[(" p50", |m| m.tpot.p50), (" p99", |m| m.tpot.p99)],
        ),
    ];
    let root = SVGBackend::new(path, (1350, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (title, series)) in root.split_evenly((1, 3)).iter().zip(panels) {
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for t in &report.targets {
            for (suffix, get) in series {
                let pts = t.runs.iter().map(|m| (x_of(m), get(m))).collect();
                lines.push((format!("{} {}{suffix}", t.label, t.url), pts));
            }
        }
        let all = lines.iter().flat_map(|(_, p)| p.iter());
        let (xmax, ymax) = all.fold((1.0f64, 1e-9f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax * 1.1)?;
        chart.configure_mesh().x_desc(x_desc).draw()?;
        for (i, (name, pts)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
