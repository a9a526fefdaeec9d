//! `tokenfab bench --profile`: where a tokenfab server's engine steps went during each run, from
//! the change in its own phase metrics (`/metrics` read before and after the run). These are the
//! server's figures, reported apart from the client-measured ones; a server without tokenfab's
//! phase metrics has no profile.
//!
//! CPU seconds are the CPU time of the threads doing each phase (the engine thread and the
//! compute pool; the HTTP phase: the server's own threads), so their shares hold on a machine that
//! other processes load; wall seconds grow with that load.

use std::collections::HashMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::report::table;

/// One phase's time over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// Speculative decoding over a run (vLLM's counters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecCounts {
    pub drafts: f64,
    pub draft_tokens: f64,
    pub accepted_tokens: f64,
}

/// The server's account of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    /// Engine steps taken.
    pub steps: f64,
    /// CPU seconds of the whole server process, every thread.
    pub process_cpu_s: f64,
    /// Engine loop phases (`http`: the server's SSE frames), in the server's order.
    pub phases: Vec<PhaseTime>,
    /// Phases inside the forward pass, when the server profiles them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_phases: Vec<PhaseTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecCounts>,
}

/// The series of one `/metrics` text this module reads: `(name, phase label)` -> value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    values: HashMap<(String, String), f64>,
    /// Phase labels in first-seen order, per family.
    order: HashMap<String, Vec<String>>,
}

const STEPS: &str = "tokenfab:engine_steps_total";
const PROCESS_CPU: &str = "tokenfab:process_cpu_seconds_total";
const PHASE_WALL: &str = "tokenfab:engine_phase_seconds_sum";
const PHASE_CPU: &str = "tokenfab:engine_phase_cpu_seconds_sum";
const FORWARD_WALL: &str = "tokenfab:forward_phase_seconds_sum";
const FORWARD_CPU: &str = "tokenfab:forward_phase_cpu_seconds_sum";
const DRAFTS: &str = "tokenfab:spec_decode_num_drafts_total";
const DRAFT_TOKENS: &str = "tokenfab:spec_decode_num_draft_tokens_total";
const ACCEPTED: &str = "tokenfab:spec_decode_num_accepted_tokens_total";

impl Snapshot {
    /// Reads the Prometheus text format; lines it does not use are skipped.
    pub fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            if !name.starts_with("tokenfab:") {
                continue;
            }
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let phase = line
                .find("phase=\"")
                .map(|at| &line[at + 7..])
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string();
            if !phase.is_empty() {
                let order = s.order.entry(name.to_string()).or_default();
                if !order.contains(&phase) {
                    order.push(phase.clone());
                }
            }
            s.values.insert((name.to_string(), phase), value);
        }
        s
    }

    /// True when the server exports tokenfab's phase metrics.
    pub fn has_phases(&self) -> bool {
        self.values
            .contains_key(&(STEPS.to_string(), String::new()))
    }

    fn get(&self, name: &str, phase: &str) -> f64 {
        self.values
            .get(&(name.to_string(), phase.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    fn phases(&self, before: &Snapshot, wall: &str, cpu: &str) -> Vec<PhaseTime> {
        let names = self.order.get(wall).cloned().unwrap_or_default();
        names
            .into_iter()
            .map(|p| PhaseTime {
                wall_s: self.get(wall, &p) - before.get(wall, &p),
                cpu_s: self.get(cpu, &p) - before.get(cpu, &p),
                phase: p,
            })
            .collect()
    }

    /// What changed from `before` to this snapshot.
    pub fn since(&self, before: &Snapshot) -> StepProfile {
        let d = |name: &str| self.get(name, "") - before.get(name, "");
        let has = |name: &str| self.values.contains_key(&(name.to_string(), String::new()));
        StepProfile {
            steps: d(STEPS),
            process_cpu_s: d(PROCESS_CPU),
            phases: self.phases(before, PHASE_WALL, PHASE_CPU),
            forward_phases: self.phases(before, FORWARD_WALL, FORWARD_CPU),
            spec: has(DRAFTS).then(|| SpecCounts {
                drafts: d(DRAFTS),
                draft_tokens: d(DRAFT_TOKENS),
                accepted_tokens: d(ACCEPTED),
            }),
        }
    }
}

impl StepProfile {
    /// Adds another run's profile (rounds of one load are pooled).
    pub fn add(&mut self, o: &StepProfile) {
        self.steps += o.steps;
        self.process_cpu_s += o.process_cpu_s;
        for (mine, theirs) in [
            (&mut self.phases, &o.phases),
            (&mut self.forward_phases, &o.forward_phases),
        ] {
            for p in theirs {
                match mine.iter_mut().find(|m| m.phase == p.phase) {
                    Some(m) => {
                        m.wall_s += p.wall_s;
                        m.cpu_s += p.cpu_s;
                    }
                    None => mine.push(p.clone()),
                }
            }
        }
        if let Some(s) = &o.spec {
            let m = self.spec.get_or_insert_with(SpecCounts::default);
            m.drafts += s.drafts;
            m.draft_tokens += s.draft_tokens;
            m.accepted_tokens += s.accepted_tokens;
        }
    }

    /// The phase table of one run.
    pub fn render(&self, load: &str) -> String {
        let steps = self.steps.max(1.0);
        // The HTTP phase runs on other threads, beside the engine's: not part of a step's wall.
        let engine_wall: f64 = self
            .phases
            .iter()
            .filter(|p| p.phase != "http")
            .map(|p| p.wall_s)
            .sum();
        let phase_cpu: f64 = self.phases.iter().map(|p| p.cpu_s).sum();
        let pct = |x: f64, of: f64| {
            if of > 0.0 {
                format!("{:.1}", 100.0 * x / of)
            } else {
                "-".into()
            }
        };
        let ms = |x: f64| format!("{:.3}", 1000.0 * x / steps);
        let mut rows: Vec<Vec<String>> = self
            .phases
            .iter()
            .map(|p| {
                let wall_share = if p.phase == "http" {
                    "(other threads)".into()
                } else {
                    pct(p.wall_s, engine_wall)
                };
                vec![
                    p.phase.clone(),
                    ms(p.wall_s),
                    wall_share,
                    ms(p.cpu_s),
                    pct(p.cpu_s, self.process_cpu_s),
                ]
            })
            .collect();
        let other = self.process_cpu_s - phase_cpu;
        rows.push(vec![
            "other process CPU".into(),
            "-".into(),
            "-".into(),
            ms(other),
            pct(other, self.process_cpu_s),
        ]);
        rows.push(vec![
            "total".into(),
            ms(engine_wall),
            "100.0".into(),
            ms(self.process_cpu_s),
            "100.0".into(),
        ]);
        let mut out = format!(
            "\nserver profile at {load}: {:.0} steps, {:.2} ms wall per step, {:.2} CPU s in all \
             (from its /metrics; CPU = CPU time of the threads doing each phase, \
             \"other process CPU\" = the process's CPU outside every phase)\n",
            self.steps,
            1000.0 * engine_wall / steps,
            self.process_cpu_s
        );
        out += &table(
            &[
                "phase",
                "wall ms/step",
                "wall %",
                "CPU ms/step",
                "CPU % of process",
            ],
            &rows,
        );
        if !self.forward_phases.is_empty() {
            let fwd_cpu: f64 = self.forward_phases.iter().map(|p| p.cpu_s).sum();
            let rows: Vec<Vec<String>> = self
                .forward_phases
                .iter()
                .map(|p| {
                    vec![
                        p.phase.clone(),
                        ms(p.wall_s),
                        ms(p.cpu_s),
                        pct(p.cpu_s, fwd_cpu),
                    ]
                })
                .collect();
            out += "inside the forward pass (all layers):\n";
            out += &table(
                &["phase", "wall ms/step", "CPU ms/step", "CPU % of forward"],
                &rows,
            );
        }
        if let Some(s) = &self.spec {
            let _ = writeln!(
                out,
                "speculative decoding: {:.0} drafts, {:.0} draft tokens, {:.0} accepted \
                 ({} of draft tokens; {:.2} tokens per verified draft incl. the one after it)",
                s.drafts,
                s.draft_tokens,
                s.accepted_tokens,
                pct(s.accepted_tokens, s.draft_tokens) + "%",
                if s.drafts > 0.0 {
                    1.0 + s.accepted_tokens / s.drafts
                } else {
                    0.0
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP tokenfab:engine_steps_total Engine steps timed by phase.
tokenfab:engine_steps_total{model_name="m"} 10
tokenfab:process_cpu_seconds_total{model_name="m"} 1.5
tokenfab:engine_phase_seconds_sum{model_name="m",phase="schedule"} 0.01
tokenfab:engine_phase_seconds_sum{model_name="m",phase="forward"} 1
tokenfab:engine_phase_seconds_sum{model_name="m",phase="http"} 0.02
tokenfab:engine_phase_cpu_seconds_sum{model_name="m",phase="schedule"} 0.01
tokenfab:engine_phase_cpu_seconds_sum{model_name="m",phase="forward"} 1.2
tokenfab:engine_phase_cpu_seconds_sum{model_name="m",phase="http"} 0.01
tokenfab:engine_phase_seconds_count{model_name="m",phase="forward"} 10
vllm:generation_tokens_total{model_name="m"} 99
"#;

    #[test]
    fn deltas_of_the_phase_series_make_the_profile() {
        let before = Snapshot::parse(BEFORE);
        assert!(before.has_phases());
        let after = Snapshot::parse(
            &(BEFORE
                .replace(
                    "steps_total{model_name=\"m\"} 10",
                    "steps_total{model_name=\"m\"} 30",
                )
                .replace(
                    "cpu_seconds_total{model_name=\"m\"} 1.5",
                    "cpu_seconds_total{model_name=\"m\"} 5.5",
                )
                .replace("phase=\"forward\"} 1\n", "phase=\"forward\"} 3\n")
                .replace("phase=\"forward\"} 1.2", "phase=\"forward\"} 4.2")
                + "tokenfab:spec_decode_num_drafts_total{model_name=\"m\"} 4\n"
                + "tokenfab:spec_decode_num_draft_tokens_total{model_name=\"m\"} 20\n"
                + "tokenfab:spec_decode_num_accepted_tokens_total{model_name=\"m\"} 10\n"),
        );
        let p = after.since(&before);
        assert_eq!((p.steps, p.process_cpu_s), (20.0, 4.0));
        let names: Vec<_> = p.phases.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(names, ["schedule", "forward", "http"]);
        assert_eq!((p.phases[1].wall_s, p.phases[1].cpu_s), (2.0, 3.0));
        assert_eq!(p.phases[0].wall_s, 0.0);
        assert_eq!(p.spec.as_ref().unwrap().accepted_tokens, 10.0);
        let text = p.render("concurrency 4");
        assert!(text.contains("20 steps, 100.00 ms wall per step"), "{text}");
        // forward: 2 s of 4 s process CPU is 3 s -> 75%; other = 4 - 3 = 1 s -> 50 ms/step.
        assert!(text.contains("forward") && text.contains("75.0"), "{text}");
        assert!(
            text.contains("other process CPU") && text.contains("50.000"),
            "{text}"
        );
        assert!(text.contains("3.50 tokens per verified draft"), "{text}");

        let mut pooled = p.clone();
        pooled.add(&p);
        assert_eq!((pooled.steps, pooled.phases[1].cpu_s), (40.0, 6.0));
        assert!(!Snapshot::parse("vllm:x 1\n").has_phases());
    }
}
