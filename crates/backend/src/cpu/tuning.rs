//! What the processor reports about itself (vendor, family/model, name, cache sizes) and the
//! kernel parameters chosen from it, once per process: the same binary runs on Intel Xeons with
//! 2-4 MiB of L2 per core, AMD EPYCs with 1 MiB of L2 and a 32 MiB L3 per CCD, and Arm servers,
//! and a size tuned on one of them is wrong on the others.
//!
//! Cache sizes come from sysfs (`/sys/devices/system/cpu/cpu0/cache/index*`, Linux on every
//! architecture), else from CPUID (leaf 4 on Intel, 0x8000001D on AMD), else from a conservative
//! default. `TOKENFAB_CPU_TUNE` overrides single choices for experiments and A/B runs, e.g.
//! `TOKENFAB_CPU_TUNE=prefetch=0,tasks=2,in_pool=0`.

use std::sync::OnceLock;

/// Who made the processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Arm,
    Other,
}

/// What the processor says about itself: the inputs of [`choose`].
#[derive(Clone, Debug, PartialEq)]
pub struct CpuInfo {
    pub vendor: Vendor,
    /// x86 display family and model (extended fields folded in); Arm: implementer and part.
    pub family: u32,
    pub model: u32,
    pub name: String,
    /// Bytes of one core's L1 data cache, L2, and the L3 that core shares (0: none reported).
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
    /// Cores this process may run on (the L3 is taken as shared by all of them).
    pub cores: usize,
}

/// Kernel parameters chosen for the processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// A product whose packed weights, read once per pool thread, total at most this many bytes
    /// may be split by rows of x (every thread reads all the weights, which must then stay in
    /// its own L2 between the row tiles); bigger ones split by groups of weight rows.
    pub row_split_max_bytes: usize,
    /// Pool tasks per thread on the packed path: few keep a fork-join cheap, more let a thread
    /// slowed by another process be caught up by the rest.
    pub tasks_per_thread: usize,
    /// How many weight blocks ahead the packed kernel prefetches (0: none, left to the
    /// hardware prefetcher).
    pub prefetch_blocks: usize,
    /// Whether a forward pass runs on a pool thread (see [`super::in_pool`]).
    pub forward_in_pool: bool,
}

/// The parameters for `cpu`. Why each:
/// - `row_split_max_bytes`: three quarters of what one core can keep close (its L2 plus its
///   share of the L3), at most 3 MiB, the largest measured. 3 MiB on the 4 MiB-L2 Xeon (where it
///   was tuned) and on the 1 MiB-L2 EPYC, where 768 KiB (the L2 alone) gave the same pp512 on a
///   quiet machine (1.00x) and 0.85x under load: the per-thread copies are served well enough
///   from its 32 MiB L3. Smaller only where the caches are small (a 512 KiB L2 and a 4 MiB L3
///   over 8 cores: 768 KiB).
/// - `tasks_per_thread`: 4 everywhere (the fork-join's cost is the same few µs on both x86
///   families; kept as a parameter so that a self-tune or an override can move it).
/// - `prefetch_blocks`: 4 blocks ahead (1.2-2.5 KiB), as measured on the Xeon; on the EPYC
///   (Zen 5, under load) none was slower and 12 no better.
/// - `forward_in_pool`: on, except on Intel. On the 2-core EPYC (quiet) a decode step's
///   products take 2.7-2.8 ms from a pool thread against 3.6-3.9 ms from the engine thread
///   (`--bench decode`), and tg128 rose 1.74x (pp512 1.19x); on the 2-core Xeon an earlier A/B
///   found the pass on a pool thread slower (156-167 vs 168-176 tok/s), so Intel keeps the
///   engine thread until it is measured again (`TOKENFAB_CPU_TUNE=in_pool=1`).
pub fn choose(cpu: &CpuInfo) -> Tuning {
    let l2 = if cpu.l2 > 0 { cpu.l2 } else { 1 << 20 };
    let near = l2 + cpu.l3 / cpu.cores.max(1);
    Tuning {
        row_split_max_bytes: (near / 4 * 3).min(3 << 20),
        tasks_per_thread: 4,
        prefetch_blocks: 4,
        forward_in_pool: cpu.vendor != Vendor::Intel,
    }
}

/// `tuning` with the overrides of a `TOKENFAB_CPU_TUNE`-style list applied (`key=value`, comma
/// separated; keys `row_split` (bytes), `tasks`, `prefetch` (blocks), `in_pool` (0 or 1)).
pub fn apply_overrides(mut tuning: Tuning, spec: &str) -> Result<Tuning, String> {
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not key=value"))?;
        let v: usize = v
            .trim()
            .parse()
            .map_err(|_| format!("`{item}`: the value must be a whole number"))?;
        match k.trim() {
            "row_split" => tuning.row_split_max_bytes = v,
            "tasks" if v > 0 => tuning.tasks_per_thread = v,
            "prefetch" => tuning.prefetch_blocks = v,
            "in_pool" if v <= 1 => tuning.forward_in_pool = v == 1,
            other => {
                return Err(format!(
                    "unknown key `{other}` (or a zero task count, or in_pool not 0/1); keys: \
                     row_split, tasks, prefetch, in_pool"
                ))
            }
        }
    }
    Ok(tuning)
}

/// The processor and the parameters chosen for it, detected once.
pub struct Chosen {
    pub cpu: CpuInfo,
    pub tuning: Tuning,
    /// The override list applied, if any.
    pub overrides: Option<String>,
}

impl Chosen {
    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let c = &self.cpu;
        let t = &self.tuning;
        format!(
            "{:?} `{}` family {} model {}, L1d {} KiB, L2 {} KiB, L3 {} KiB, isa {:?}: \
             row split up to {} KiB, {} tasks per thread, prefetch {} blocks ahead, forward \
             pass on {}{}",
            c.vendor,
            c.name,
            c.family,
            c.model,
            c.l1d >> 10,
            c.l2 >> 10,
            c.l3 >> 10,
            super::Isa::detect(),
            t.row_split_max_bytes >> 10,
            t.tasks_per_thread,
            t.prefetch_blocks,
            if t.forward_in_pool {
                "a pool thread"
            } else {
                "the calling thread"
            },
            self.overrides
                .as_deref()
                .map(|o| format!(" (TOKENFAB_CPU_TUNE={o})"))
                .unwrap_or_default()
        )
    }
}

/// The processor and parameters of this process. A malformed `TOKENFAB_CPU_TUNE` panics with
/// its reason at the first call (the program's start-up log calls it first).
pub fn get() -> &'static Chosen {
    static CHOSEN: OnceLock<Chosen> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let cpu = detect();
        let mut tuning = choose(&cpu);
        let overrides = std::env::var("TOKENFAB_CPU_TUNE").ok();
        if let Some(spec) = &overrides {
            tuning = apply_overrides(tuning, spec)
                .unwrap_or_else(|e| panic!("TOKENFAB_CPU_TUNE={spec}: {e}"));
        }
        Chosen {
            cpu,
            tuning,
            overrides,
        }
    })
}

/// This processor, from sysfs and CPUID (or /proc/cpuinfo on Arm).
pub fn detect() -> CpuInfo {
    let mut cpu = identify();
    let caches = sysfs_caches(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache"));
    let (l1d, l2, l3) = if caches != (0, 0, 0) {
        caches
    } else {
        cpuid_caches(cpu.vendor)
    };
    (cpu.l1d, cpu.l2, cpu.l3) = (l1d, l2, l3);
    cpu.cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpu
}

/// One cache level as sysfs describes it: `level`, `type` and `size` (e.g. "1024K").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub level: u32,
    pub kind: String,
    pub size: String,
}

/// (L1d, L2, L3) bytes from sysfs-style entries; instruction caches are skipped, a missing
/// level is 0.
pub fn caches_from_entries(entries: &[CacheEntry]) -> (usize, usize, usize) {
    let mut out = (0, 0, 0);
    for e in entries.iter().filter(|e| e.kind != "Instruction") {
        let size = parse_size(&e.size).unwrap_or(0);
        match e.level {
            1 => out.0 = size,
            2 => out.1 = size,
            3 => out.2 = size,
            _ => {}
        }
    }
    out
}

/// "48K", "1024K", "32M" or a plain byte count.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mul) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mul)
}

fn sysfs_caches(dir: &std::path::Path) -> (usize, usize, usize) {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let entries: Vec<CacheEntry> = (0..8)
        .map_while(|i| {
            let d = dir.join(format!("index{i}"));
            Some(CacheEntry {
                level: read(d.join("level"))?.trim().parse().ok()?,
                kind: read(d.join("type"))?.trim().to_string(),
                size: read(d.join("size"))?.trim().to_string(),
            })
        })
        .collect();
    caches_from_entries(&entries)
}

#[cfg(target_arch = "x86_64")]
fn identify() -> CpuInfo {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 processor; leaves above the maximum are not read.
    // (`unsafe` for the Rust versions before `__cpuid_count` became safe.)
    #[allow(unused_unsafe)]
    unsafe {
        let l0 = __cpuid_count(0, 0);
        let mut v = [0u8; 12];
        for (i, r) in [l0.ebx, l0.edx, l0.ecx].iter().enumerate() {
            v[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
        }
        let vendor = match &v {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        };
        let eax = __cpuid_count(1, 0).eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((eax >> 20) & 0xFF)
        } else {
            base
        };
        let model = if base == 0x6 || base == 0xF {
            ((eax >> 4) & 0xF) | (((eax >> 16) & 0xF) << 4)
        } else {
            (eax >> 4) & 0xF
        };
        let mut name = Vec::new();
        if __cpuid_count(0x8000_0000, 0).eax >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004u32 {
                let r = __cpuid_count(leaf, 0);
                for w in [r.eax, r.ebx, r.ecx, r.edx] {
                    name.extend_from_slice(&w.to_le_bytes());
                }
            }
        }
        let name = String::from_utf8_lossy(&name)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string();
        CpuInfo {
            vendor,
            family,
            model,
            name,
            l1d: 0,
            l2: 0,
            l3: 0,
            cores: 1,
        }
    }
}

/// (L1d, L2, L3) from CPUID's deterministic cache parameters: leaf 4 on Intel, 0x8000001D on
/// AMD (same register layout).
#[cfg(target_arch = "x86_64")]
fn cpuid_caches(vendor: Vendor) -> (usize, usize, usize) {
    use std::arch::x86_64::__cpuid_count;
    let leaf = match vendor {
        Vendor::Intel => 4,
        Vendor::Amd => 0x8000_001D,
        _ => return (0, 0, 0),
    };
    // SAFETY: CPUID exists on every x86_64 processor; the leaf is checked against the maximum.
    #[allow(unused_unsafe)]
    unsafe {
        let max = __cpuid_count(leaf & 0x8000_0000, 0).eax;
        if max < leaf {
            return (0, 0, 0);
        }
        let mut out = (0, 0, 0);
        for sub in 0..8 {
            let r = __cpuid_count(leaf, sub);
            let kind = r.eax & 0x1F; // 0 none, 1 data, 2 instruction, 3 unified
            if kind == 0 {
                break;
            }
            if kind == 2 {
                continue;
            }
            let ways = ((r.ebx >> 22) & 0x3FF) as usize + 1;
            let parts = ((r.ebx >> 12) & 0x3FF) as usize + 1;
            let line = (r.ebx & 0xFFF) as usize + 1;
            let sets = r.ecx as usize + 1;
            let size = ways * parts * line * sets;
            match (r.eax >> 5) & 0x7 {
                1 => out.0 = size,
                2 => out.1 = size,
                3 => out.2 = size,
                _ => {}
            }
        }
        out
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn identify() -> CpuInfo {
    // /proc/cpuinfo on Linux/aarch64: "CPU implementer : 0x41", "CPU part : 0xd40".
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let hex = |v: Option<String>| {
        v.and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    };
    let family = hex(field("CPU implementer"));
    let model = hex(field("CPU part"));
    CpuInfo {
        vendor: if cfg!(target_arch = "aarch64") {
            Vendor::Arm
        } else {
            Vendor::Other
        },
        family,
        model,
        name: field("model name")
            .unwrap_or_else(|| format!("implementer {family:#x} part {model:#x}")),
        l1d: 0,
        l2: 0,
        l3: 0,
        cores: 1,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_caches(_: Vendor) -> (usize, usize, usize) {
    (0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(u32, &str, &str)]) -> Vec<CacheEntry> {
        list.iter()
            .map(|&(level, kind, size)| CacheEntry {
                level,
                kind: kind.into(),
                size: size.into(),
            })
            .collect()
    }

    fn cpu(vendor: Vendor, (l1d, l2, l3): (usize, usize, usize), cores: usize) -> CpuInfo {
        CpuInfo {
            vendor,
            family: 0,
            model: 0,
            name: String::new(),
            l1d,
            l2,
            l3,
            cores,
        }
    }

    #[test]
    fn sysfs_entries_give_data_cache_sizes() {
        // Intel Xeon (Sapphire Rapids class): 48K L1d, 32K L1i, 2M L2, 105M L3.
        let xeon = entries(&[
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "2048K"),
            (3, "Unified", "107520K"),
        ]);
        assert_eq!(caches_from_entries(&xeon), (48 << 10, 2 << 20, 105 << 20));
        // AMD EPYC Zen 4: 32K L1d, 1M L2, 32M L3.
        let zen4 = entries(&[
            (1, "Data", "32K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "1024K"),
            (3, "Unified", "32768K"),
        ]);
        assert_eq!(caches_from_entries(&zen4), (32 << 10, 1 << 20, 32 << 20));
        // Apple M1-like Arm: no L3 reported.
        let arm = entries(&[(1, "Data", "128K"), (2, "Unified", "12M")]);
        assert_eq!(caches_from_entries(&arm), (128 << 10, 12 << 20, 0));
        assert_eq!(caches_from_entries(&[]), (0, 0, 0));
        assert_eq!(parse_size("junk"), None);
    }

    #[test]
    fn the_choice_follows_the_caches_and_the_vendor() {
        // 2-vCPU Xeon (4 MiB L2) and 2-vCPU EPYC (1 MiB L2, 32 MiB L3): 3 MiB, as measured on both.
        let xeon = choose(&cpu(Vendor::Intel, (48 << 10, 4 << 20, 260 << 20), 2));
        assert_eq!(xeon.row_split_max_bytes, 3 << 20);
        let zen4 = choose(&cpu(Vendor::Amd, (32 << 10, 1 << 20, 32 << 20), 8));
        assert_eq!(zen4.row_split_max_bytes, 3 << 20);
        // A small-cache part: 512 KiB L2 and 4 MiB of L3 over 8 cores keep 1 MiB close.
        let small = choose(&cpu(Vendor::Amd, (32 << 10, 512 << 10, 4 << 20), 8));
        assert_eq!(small.row_split_max_bytes, 768 << 10);
        // Graviton-like Arm (1 MiB L2, 32 MiB L3 over 64 cores) and nothing reported at all.
        let graviton = choose(&cpu(Vendor::Arm, (64 << 10, 1 << 20, 32 << 20), 64));
        assert_eq!(graviton.row_split_max_bytes, (1536 << 10) / 4 * 3);
        let unknown = choose(&cpu(Vendor::Other, (0, 0, 0), 1));
        assert_eq!(unknown.row_split_max_bytes, 768 << 10);
        for t in [xeon, zen4, small, graviton, unknown] {
            assert!(t.tasks_per_thread >= 1);
        }
        // Measured: faster from a pool thread on the EPYC, slower on the Xeon.
        assert!(!xeon.forward_in_pool);
        assert!(zen4.forward_in_pool && graviton.forward_in_pool);
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_named() {
        let base = choose(&cpu(Vendor::Amd, (32 << 10, 1 << 20, 32 << 20), 8));
        let t = apply_overrides(base, "prefetch=0, tasks=2,in_pool=0").unwrap();
        assert_eq!((t.prefetch_blocks, t.tasks_per_thread), (0, 2));
        assert!(!t.forward_in_pool);
        assert!(apply_overrides(base, "in_pool=2")
            .unwrap_err()
            .contains("in_pool"));
        assert_eq!(t.row_split_max_bytes, base.row_split_max_bytes);
        assert!(apply_overrides(base, "tasks=0")
            .unwrap_err()
            .contains("tasks"));
        assert!(apply_overrides(base, "speed=11")
            .unwrap_err()
            .contains("speed"));
        assert!(apply_overrides(base, "prefetch")
            .unwrap_err()
            .contains("key=value"));
    }

    #[test]
    fn this_machine_is_detected() {
        let c = detect();
        // Every Linux machine the tests run on reports an L1d and an L2 through sysfs or CPUID.
        if cfg!(target_os = "linux") {
            assert!(c.l1d >= 16 << 10 && c.l2 >= 256 << 10, "{c:?}");
        }
    }
}
