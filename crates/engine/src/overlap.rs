//! The step on a device sampler, with async scheduling (vLLM's `--async-scheduling`): the host
//! plans step N+1 while the device runs step N.
//!
//! With step N in flight (launched, tokens not back): the scheduler plans N+1 with a placeholder
//! for each token N samples (`Scheduler::schedule_ahead`); then N's grammar masks, the wait for
//! N's tokens, host sampling of the rows the device handed back, the grammars' and scheduler's
//! update; then N+1 is launched, each placeholder row fed on the device from N's token where it
//! still is (`runner::Fed`, `tokenfab_backend::cuda::feed`); then N's tokens are detokenized,
//! checked for stop strings and streamed while the device runs N+1. A request that ended at N
//! (stop token, length, stop string, abort, failed grammar) has its row in N+1 run and
//! discarded: the scheduler no longer knows it, its blocks were freed at its end, and no step
//! that can reuse them runs before N+1 on the device's one stream.
//!
//! Since N+1 is launched only once N's tokens are applied on the host, the rows the host samples
//! (prompt log-probabilities, top alternatives, the device's hand-backs) and grammar-constrained
//! rows (whose next mask needs N's token) need no fallback: N+1's inputs, draws, penalties and
//! masks are made from the request's state after N, exactly as in a synchronous step, so a
//! request's tokens and its seeded stream's draws are the same either way. What falls back to
//! a synchronous step (N+1 planned after N is done) is named by [`Fallback`].

use std::collections::HashMap;

use tokenfab_scheduler::SchedulerOutput;
use tokenfab_types::RequestId;

use super::EngineCore;
use crate::device_sampling::DeviceStep;
use crate::error::Result;
use crate::host::sample_step;
use crate::profile::EnginePhase;
use crate::runner::{Fed, StepLogits};
use crate::sampler::Sample;

/// A launched step whose tokens are not back yet.
pub(super) struct InFlight {
    out: SchedulerOutput,
    /// Why the next step waits for this one's tokens to be planned; `None`: planned meanwhile.
    fallback: Option<Fallback>,
}

/// Why the step after a launched one is planned synchronously, once the launched one is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// `async_scheduling` is off.
    Off,
    /// Speculative decoding: the next step's drafts are proposed from this step's tokens and
    /// verified against them.
    Speculative,
    /// Planned ahead, a request needed blocks only a preemption could free; preemption waits
    /// for a synchronous plan.
    Stalled,
}

impl EngineCore {
    /// One step on a device sampler (see the module's docs).
    pub(super) fn device_step(&mut self) -> Result<()> {
        let n = match self.in_flight.take() {
            Some(n) => n,
            None => {
                let out = self.sched.schedule();
                self.note_scheduled(&out);
                self.timer.lap(EnginePhase::Schedule);
                if out.scheduled.is_empty() {
                    return Ok(());
                }
                self.launch(out, &HashMap::new())?
            }
        };
        let next = n.fallback.is_none().then(|| {
            let next = self.sched.schedule_ahead(&n.out);
            self.shared.metrics.steps_planned_ahead.add(1);
            self.note_scheduled(&next);
            self.timer.lap(EnginePhase::Schedule);
            next
        });
        let (sampled, failed, fed) = self.collect(&n.out)?;
        let (sampled, finished) = self.settle(&n.out, sampled, failed);
        if let Some(next) = next.filter(|o| !o.scheduled.is_empty()) {
            self.in_flight = Some(self.launch(next, &fed)?);
        }
        self.emit(sampled, finished);
        self.propose(&n.out);
        self.timer.lap(EnginePhase::Propose);
        Ok(())
    }

    /// Launches `out`, its placeholder rows fed from `fed`, and says whether the step after it
    /// can be planned while it runs.
    fn launch(&mut self, out: SchedulerOutput, fed: &HashMap<RequestId, Fed>) -> Result<InFlight> {
        let all_rows = self.wants_prompt_logprobs(&out);
        let mut step = DeviceStep {
            runner: &mut self.runner,
            stage: &mut self.stage,
            timer: &mut self.timer,
        };
        step.launch(&out, &all_rows, (&self.active, &self.sched), fed)?;
        let fallback = if !self.async_scheduling {
            Some(Fallback::Off)
        } else if self.spec.is_some() {
            Some(Fallback::Speculative)
        } else if out.stalled {
            Some(Fallback::Stalled)
        } else {
            None
        };
        Ok(InFlight { out, fallback })
    }

    /// Waits for the launched step `out` (its grammar masks computed first, while the device
    /// runs it) and samples the rows the host samples. Returns the tokens, the rows whose mask
    /// failed, and where each sampled token is, for the next step's feed.
    fn collect(&mut self, out: &SchedulerOutput) -> Result<Collected> {
        let step = DeviceStep {
            runner: &mut self.runner,
            stage: &mut self.stage,
            timer: &mut self.timer,
        };
        let (logits, failed) = step.collect(out, &mut self.constrained, &self.shared.metrics);
        let mut logits = logits?;
        self.constrained.forget(&failed);
        self.constrained.apply(out, &mut logits);
        let spec = self.shared.metrics.spec.as_ref();
        let sampled = sample_step(&mut self.active, &self.sched, out, &logits, spec);
        let fed = fed_from(out, &logits, &sampled);
        Ok((sampled, failed, fed))
    }
}

type Collected = (
    Vec<(RequestId, Sample)>,
    crate::constrained::Failed,
    HashMap<RequestId, Fed>,
);

/// Where each token `out` sampled is: its last logits row on the device, or the host's token.
/// Requests whose row the host sampled but whose token was dropped (a failed grammar) have no
/// entry.
fn fed_from(
    out: &SchedulerOutput,
    logits: &StepLogits,
    sampled: &[(RequestId, Sample)],
) -> HashMap<RequestId, Fed> {
    // A request's tokens are together, its last one last.
    let host: HashMap<RequestId, u32> = sampled.iter().map(|(id, s)| (*id, s.token)).collect();
    out.scheduled
        .iter()
        .zip(logits.rows)
        .filter(|(s, _)| s.sample)
        .filter_map(|(s, rows)| {
            let row = rows.end.checked_sub(1)?;
            match logits.device_token(row) {
                Some(_) => Some((s.id, Fed::Device(row as u32))),
                None => Some((s.id, Fed::Host(*host.get(&s.id)?))),
            }
        })
        .collect()
}
