//! Where a step goes: wall and CPU time per phase of the engine loop, kept as histograms in
//! [`crate::Metrics`] (`tokenfab:engine_phase_seconds` and `..._cpu_seconds`, label `phase`).
//!
//! CPU time is what shares can be trusted on under contention: on a loaded machine a phase's wall
//! time grows with whatever else runs, its CPU time does not. A phase's CPU time is that of the
//! threads that do the engine's work, read from their own clocks: the engine thread, plus every
//! thread of the compute pool (`rayon`'s global pool) for the phases that use it (batch,
//! forward, sample: one system call per pool thread, so not for the others). The HTTP phase is
//! timed on the server's threads with each one's own clock.
//! Whatever else the process burns (the async runtime, socket writes, the allocator's
//! background work) is the difference between `tokenfab:process_cpu_seconds_total` and the sum of
//! the phases.
//!
//! The model's own phases (per layer: norms, products, attention) come in through
//! [`ForwardProfile`], a [`ForwardHook`] the forward pass calls at its phase boundaries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenfab_types::profile::{ForwardHook, ForwardPhase};

use crate::metrics::PhaseMetrics;

/// A phase of the engine loop (one step, plus the server's share of a token's way out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnginePhase {
    /// New requests and aborts taken in, disconnected clients reaped, backlogs flushed, gauges.
    Commands,
    /// `Scheduler::schedule`: which tokens of which requests (prefill admission included).
    Schedule,
    /// The scheduler's output turned into the flat batch a forward pass reads.
    Batch,
    /// The forward pass (the compute pool's work).
    Forward,
    /// Logits processors, penalties, sampling, draft verification, log-probabilities.
    Sample,
    /// `Scheduler::update`: progress, stop tokens, length caps, draft roll-back.
    Update,
    /// Token bytes to text.
    Detokenize,
    /// Stop strings over the new text.
    StopStrings,
    /// Stream events handed to each request's channel, requests ended, latency metrics.
    Events,
    /// n-gram drafts for the next step (speculative decoding).
    Propose,
    /// The server turning events into SSE frames (its own threads, its own clocks).
    Http,
}

impl EnginePhase {
    pub const COUNT: usize = 11;
    pub const ALL: [EnginePhase; Self::COUNT] = [
        EnginePhase::Commands,
        EnginePhase::Schedule,
        EnginePhase::Batch,
        EnginePhase::Forward,
        EnginePhase::Sample,
        EnginePhase::Update,
        EnginePhase::Detokenize,
        EnginePhase::StopStrings,
        EnginePhase::Events,
        EnginePhase::Propose,
        EnginePhase::Http,
    ];

    /// The label value in metrics (`phase="forward"`).
    pub fn name(self) -> &'static str {
        match self {
            EnginePhase::Commands => "commands",
            EnginePhase::Schedule => "schedule",
            EnginePhase::Batch => "batch",
            EnginePhase::Forward => "forward",
            EnginePhase::Sample => "sample",
            EnginePhase::Update => "update",
            EnginePhase::Detokenize => "detokenize",
            EnginePhase::StopStrings => "stop_strings",
            EnginePhase::Events => "events",
            EnginePhase::Propose => "propose",
            EnginePhase::Http => "http",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process, every thread.
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; a bad clock id only returns an error.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The CPU clocks of the threads doing the engine's work: the engine thread (read as "this
/// thread") and each thread of the global compute pool.
#[derive(Clone, Debug)]
pub struct CpuClocks {
    pool: Arc<[libc::clockid_t]>,
}

impl CpuClocks {
    /// Asks each thread of the global pool for its CPU clock (once, at engine start).
    pub fn of_global_pool() -> Self {
        let ids = rayon::broadcast(|_| {
            let mut id: libc::clockid_t = 0;
            // SAFETY: the calling thread's own handle, and a valid place for the clock id.
            let ok = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) } == 0;
            ok.then_some(id)
        });
        Self {
            pool: ids.into_iter().flatten().collect(),
        }
    }

    /// Pool threads whose clocks are read.
    pub fn pool_threads(&self) -> usize {
        self.pool.len()
    }

    /// CPU time so far of the calling thread plus every pool thread.
    pub fn now(&self) -> Duration {
        thread_cpu() + self.pool()
    }

    /// CPU time so far of every pool thread (one system call each).
    pub fn pool(&self) -> Duration {
        self.pool.iter().map(|&id| clock(id)).sum()
    }
}

/// Wall and CPU time charged to `N` phases: each lap charges the time since the previous one (or
/// since `begin`) to a phase. The calling thread's clock is read at every lap, the pool's clocks
/// (a system call per thread) only at laps that ask for them: pool time between two such laps
/// goes to the second.
struct Laps<const N: usize> {
    clocks: CpuClocks,
    /// Whether the lapping thread's own clock is read: not when it is a pool thread, whose clock
    /// the pool's already include (a forward pass driven from inside the pool).
    own_counted: bool,
    wall: Instant,
    /// This thread's CPU time and the pool's at the last lap that read each.
    own: Duration,
    pool: Duration,
    /// (wall, CPU) per phase since `begin`.
    acc: [(Duration, Duration); N],
}

impl<const N: usize> Laps<N> {
    fn new(clocks: CpuClocks) -> Self {
        Self {
            own_counted: true,
            wall: Instant::now(),
            own: thread_cpu(),
            pool: clocks.pool(),
            clocks,
            acc: [(Duration::ZERO, Duration::ZERO); N],
        }
    }

    fn begin(&mut self) {
        self.acc = [(Duration::ZERO, Duration::ZERO); N];
        self.own_counted = rayon::current_thread_index().is_none();
        self.wall = Instant::now();
        self.own = self.own_cpu();
        self.pool = self.clocks.pool();
    }

    fn own_cpu(&self) -> Duration {
        if self.own_counted {
            thread_cpu()
        } else {
            Duration::ZERO
        }
    }

    fn lap(&mut self, phase: usize, read_pool: bool) {
        let (wall, own) = (Instant::now(), self.own_cpu());
        let a = &mut self.acc[phase];
        a.0 += wall - self.wall;
        a.1 += own.saturating_sub(self.own);
        if read_pool {
            let pool = self.clocks.pool();
            a.1 += pool.saturating_sub(self.pool);
            self.pool = pool;
        }
        self.wall = wall;
        self.own = own;
    }
}

/// Times the phases of one engine step: each [`StepTimer::lap`] charges the wall and CPU time
/// since the previous lap to a phase; [`StepTimer::end`] records the step's totals, and those of
/// the step's forward pass when the inside of passes is profiled.
pub(crate) struct StepTimer(Laps<{ EnginePhase::COUNT }>, Option<ForwardProfile>);

impl StepTimer {
    /// With `profile_forward`, [`StepTimer::forward_hook`] hands the forward pass a hook that
    /// times its phases (about 3 clock reads per phase per layer: a small share of a pass, so off
    /// by default).
    pub fn new(clocks: CpuClocks, profile_forward: bool) -> Self {
        let forward = profile_forward.then(|| ForwardProfile::new(clocks.clone()));
        Self(Laps::new(clocks), forward)
    }

    /// Starts a step: clears the totals and takes the clocks.
    pub fn begin(&mut self) {
        self.0.begin();
    }

    /// The hook for this step's forward pass; `None` when passes are not profiled.
    pub fn forward_hook(&mut self) -> Option<&mut dyn ForwardHook> {
        self.1.as_mut().map(|f| f as &mut dyn ForwardHook)
    }

    /// Charges the time since the previous lap (or `begin`) to `phase`. The pool's clocks are
    /// read after the phases that use the pool (batch, so that the forward starts from a fresh
    /// reading; forward; sample); its threads' CPU between steps (idle spinning) is left to
    /// "other process CPU".
    pub fn lap(&mut self, phase: EnginePhase) {
        let pool = matches!(
            phase,
            EnginePhase::Batch | EnginePhase::Forward | EnginePhase::Sample
        );
        self.0.lap(phase.index(), pool);
    }

    /// CPU time charged to `phase` so far in this step.
    pub fn cpu(&self, phase: EnginePhase) -> Duration {
        self.0.acc[phase.index()].1
    }

    /// Records the step's per-phase totals (the server's HTTP phase is recorded by the server),
    /// and its forward pass's when one was profiled.
    pub fn end(&mut self, m: &PhaseMetrics) {
        m.steps.add(1);
        for p in EnginePhase::ALL {
            if p != EnginePhase::Http {
                let (wall, cpu) = self.0.acc[p.index()];
                m.observe(p, wall, cpu);
            }
        }
        if let Some(f) = &mut self.1 {
            f.end(m);
        }
    }
}

/// Times a piece of the server's work on its own thread as [`EnginePhase::Http`].
#[derive(Clone)]
pub struct HttpTimer {
    pub(crate) shared: Arc<crate::handle::Shared>,
}

impl HttpTimer {
    /// Runs `f`, charging its wall and thread CPU time to the HTTP phase.
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let r = f();
        let m = &self.shared.metrics.phases;
        m.observe(
            EnginePhase::Http,
            wall.elapsed(),
            thread_cpu().saturating_sub(cpu),
        );
        r
    }
}

/// The hook a forward pass calls at its phase boundaries: sums each [`ForwardPhase`]'s wall
/// and CPU time over the layers of one pass, recorded per pass by [`ForwardProfile::end`]. The
/// pool's clocks are read at every boundary: the phases run on the pool.
pub struct ForwardProfile(Laps<{ ForwardPhase::ALL.len() }>, bool);

impl ForwardProfile {
    pub fn new(clocks: CpuClocks) -> Self {
        Self(Laps::new(clocks), false)
    }

    /// Records the totals per phase of the pass begun since the last call, if one was (an
    /// executor that cannot time its phases never begins one).
    pub fn end(&mut self, m: &PhaseMetrics) {
        if !std::mem::take(&mut self.1) {
            return;
        }
        m.forward_passes.add(1);
        for p in ForwardPhase::ALL {
            let (wall, cpu) = self.0.acc[p.index()];
            m.forward_wall[p.index()].observe(wall.as_secs_f64());
            m.forward_cpu[p.index()].observe(cpu.as_secs_f64());
        }
    }
}

impl ForwardHook for ForwardProfile {
    fn pass_begin(&mut self) {
        self.1 = true;
        self.0.begin();
    }

    fn phase_done(&mut self, _layer: Option<usize>, phase: ForwardPhase) {
        self.0.lap(phase.index(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    /// `(observations, sum)` of each histogram.
    fn totals(h: &[Histogram]) -> Vec<(u64, f64)> {
        h.iter().map(|h| (h.count(), h.sum())).collect()
    }

    /// Burns about `ms` of CPU on this thread.
    fn spin(ms: u64) {
        let t = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - t < Duration::from_millis(ms) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    #[test]
    fn laps_charge_cpu_to_the_phase_that_spent_it_not_to_sleep() {
        let m = PhaseMetrics::default();
        let clocks = CpuClocks::of_global_pool();
        let pool = clocks.pool_threads() as f64;
        assert!(pool >= 1.0);
        let mut t = StepTimer::new(clocks, false);
        t.begin();
        spin(30);
        t.lap(EnginePhase::Sample);
        std::thread::sleep(Duration::from_millis(30));
        t.lap(EnginePhase::Events);
        // Work on the pool counts too.
        rayon::broadcast(|_| spin(20));
        t.lap(EnginePhase::Forward);
        t.end(&m);
        let wall = totals(&m.wall);
        let cpu = totals(&m.cpu);
        let (s, e, f) = (
            EnginePhase::Sample.index(),
            EnginePhase::Events.index(),
            EnginePhase::Forward.index(),
        );
        assert!(cpu[s].1 >= 0.029, "{cpu:?}");
        assert!(wall[e].1 >= 0.029 && cpu[e].1 < 0.015, "{wall:?} {cpu:?}");
        assert!(cpu[f].1 >= 0.019 * pool, "{cpu:?}");
        assert_eq!(m.steps.get(), 1);
        // Every engine phase got one observation, the HTTP phase none.
        assert!(EnginePhase::ALL
            .iter()
            .all(|p| (wall[p.index()].0 == 1) == (*p != EnginePhase::Http)));
    }

    #[test]
    fn the_forward_hook_sums_each_phase_over_the_layers() {
        let m = PhaseMetrics::default();
        let mut p = ForwardProfile::new(CpuClocks::of_global_pool());
        p.pass_begin();
        for layer in 0..3 {
            spin(4);
            p.phase_done(Some(layer), ForwardPhase::Qkv);
            p.phase_done(Some(layer), ForwardPhase::Attention);
        }
        p.end(&m);
        let cpu = totals(&m.forward_cpu);
        assert!(cpu[ForwardPhase::Qkv.index()].1 >= 0.011, "{cpu:?}");
        assert!(cpu[ForwardPhase::Attention.index()].1 < 0.004, "{cpu:?}");
        assert_eq!(m.forward_passes.get(), 1);
    }

    #[test]
    fn a_step_records_forward_phases_only_for_a_profiled_pass() {
        let m = PhaseMetrics::default();
        let mut off = StepTimer::new(CpuClocks::of_global_pool(), false);
        assert!(off.forward_hook().is_none());
        let mut t = StepTimer::new(CpuClocks::of_global_pool(), true);
        // An executor that cannot time its phases never begins a pass: nothing recorded.
        t.begin();
        t.end(&m);
        assert_eq!(m.forward_passes.get(), 0);
        t.begin();
        let h = t.forward_hook().unwrap();
        h.pass_begin();
        spin(4);
        h.phase_done(Some(0), ForwardPhase::Attention);
        h.phase_done(None, ForwardPhase::Logits);
        t.end(&m);
        assert_eq!(m.forward_passes.get(), 1);
        let cpu = totals(&m.forward_cpu);
        assert!(cpu[ForwardPhase::Attention.index()].1 >= 0.0035, "{cpu:?}");
        assert!(cpu[ForwardPhase::Logits.index()].1 < 0.002, "{cpu:?}");
        // A pass driven from a pool thread counts that thread once (through the pool's clocks).
        let mut p = ForwardProfile::new(CpuClocks::of_global_pool());
        rayon::scope(|_| {
            p.pass_begin();
            spin(20);
            p.phase_done(Some(0), ForwardPhase::Qkv);
        });
        p.end(&m);
        let cpu = totals(&m.forward_cpu)[ForwardPhase::Qkv.index()].1;
        // Counted twice it would be >= 0.04.
        assert!((0.019..0.036).contains(&cpu), "{cpu}");
    }

    #[test]
    fn process_cpu_covers_every_thread() {
        let before = process_cpu();
        std::thread::spawn(|| spin(20)).join().unwrap();
        assert!(process_cpu() - before >= Duration::from_millis(19));
    }
}
