//! Which of llama.cpp's CPU backend variants this machine can run, and why.
//!
//! A package ships llama.cpp's CPU backend several times, as `libggml-cpu-<variant>.so`, each
//! compiled for one x86 feature level (ggml's `GGML_CPU_ALL_VARIANTS`). ggml would pick one by
//! CPUID alone, and says so itself ("this does not check for OS support"). That is not enough:
//! an instruction set also needs the kernel to save and restore its registers (the XCR0 bits,
//! read with `xgetbv`), and AMX also needs a per-process permission from the kernel
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); without it the first tile instruction dies with SIGILL.
//!
//! [`select`] is the rule, pure and tested on recorded facts: the variant with ggml's highest
//! score among those that are shipped, whose CPU flags are all present, whose register state the
//! kernel enables, and, for AMX, whose permission the kernel granted. [`CpuFacts::probe`] reads
//! those facts on the live machine. `appld` loads the variant that [`select`] picks; `applctl
//! check` reports the same choice and the reasons for skipping the better ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// An instruction-set group, as ggml's variant list names them (`GGML_<NAME>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Sse42,
    Avx,
    F16c,
    Fma,
    Avx2,
    Bmi2,
    AvxVnni,
    Avx512,
    Avx512Vbmi,
    Avx512Vnni,
    Avx512Bf16,
    AmxTile,
    AmxInt8,
}

/// XCR0 bits 1 and 2: SSE and AVX (YMM) state.
const XCR0_YMM: u64 = 0b110;
/// XCR0 bits 5, 6 and 7: AVX-512 opmask, ZMM_Hi256 and Hi16_ZMM state.
const XCR0_ZMM: u64 = 0b1110_0000;
/// XCR0 bits 17 and 18: AMX TILECFG and TILEDATA state.
const XCR0_TILES: u64 = 0b11 << 17;

impl Isa {
    /// The `/proc/cpuinfo` flags that must all be present (ggml's score function checks the
    /// same CPUID bits).
    pub fn cpuinfo_flags(self) -> &'static [&'static str] {
        match self {
            Isa::Sse42 => &["sse4_2"],
            Isa::Avx => &["avx"],
            Isa::F16c => &["f16c"],
            Isa::Fma => &["fma"],
            Isa::Avx2 => &["avx2"],
            Isa::Bmi2 => &["bmi2"],
            Isa::AvxVnni => &["avx_vnni"],
            Isa::Avx512 => &["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"],
            Isa::Avx512Vbmi => &["avx512vbmi"],
            Isa::Avx512Vnni => &["avx512_vnni"],
            Isa::Avx512Bf16 => &["avx512_bf16"],
            Isa::AmxTile => &["amx_tile"],
            Isa::AmxInt8 => &["amx_int8"],
        }
    }

    /// The XCR0 bits the kernel must have enabled for these instructions' registers.
    fn xcr0_bits(self) -> u64 {
        match self {
            Isa::Sse42 | Isa::Bmi2 => 0,
            Isa::Avx | Isa::F16c | Isa::Fma | Isa::Avx2 | Isa::AvxVnni => XCR0_YMM,
            Isa::Avx512 | Isa::Avx512Vbmi | Isa::Avx512Vnni | Isa::Avx512Bf16 => {
                XCR0_YMM | XCR0_ZMM
            }
            Isa::AmxTile | Isa::AmxInt8 => XCR0_TILES,
        }
    }

    /// ggml's weight for this group in `ggml_backend_cpu_x86_score` (AMX_TILE has none there;
    /// it always comes with AMX_INT8).
    fn score(self) -> u32 {
        match self {
            Isa::Fma => 1,
            Isa::F16c => 1 << 1,
            Isa::Sse42 => 1 << 2,
            Isa::Bmi2 => 1 << 3,
            Isa::Avx => 1 << 4,
            Isa::Avx2 => 1 << 5,
            Isa::AvxVnni => 1 << 6,
            Isa::Avx512 => 1 << 7,
            Isa::Avx512Vbmi => 1 << 8,
            Isa::Avx512Bf16 => 1 << 9,
            Isa::Avx512Vnni => 1 << 10,
            Isa::AmxInt8 => 1 << 11,
            Isa::AmxTile => 0,
        }
    }

    fn needs_amx_permission(self) -> bool {
        matches!(self, Isa::AmxTile | Isa::AmxInt8)
    }
}

/// One CPU backend variant: its name in `libggml-cpu-<name>.so` and what it was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub isas: &'static [Isa],
}

impl Variant {
    /// ggml's score: 1 plus the weight of every group the variant was compiled for.
    pub fn score(&self) -> u32 {
        1 + self.isas.iter().map(|i| i.score()).sum::<u32>()
    }
}

use Isa::*;
const HASWELL: &[Isa] = &[Sse42, Avx, F16c, Fma, Avx2, Bmi2];
const SKYLAKEX: &[Isa] = &[Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512];

/// ggml's x86 variants (`ggml/src/CMakeLists.txt`, `GGML_CPU_ALL_VARIANTS`, llama.cpp as
/// vendored by llama-cpp-sys-2 0.1.161), in that file's order.
pub const X86_VARIANTS: &[Variant] = &[
    Variant {
        name: "x64",
        isas: &[],
    },
    Variant {
        name: "sse42",
        isas: &[Sse42],
    },
    Variant {
        name: "sandybridge",
        isas: &[Sse42, Avx],
    },
    Variant {
        name: "ivybridge",
        isas: &[Sse42, Avx, F16c],
    },
    Variant {
        name: "piledriver",
        isas: &[Sse42, Avx, F16c, Fma],
    },
    Variant {
        name: "haswell",
        isas: HASWELL,
    },
    Variant {
        name: "skylakex",
        isas: SKYLAKEX,
    },
    Variant {
        name: "cannonlake",
        isas: &[Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vbmi],
    },
    Variant {
        name: "cascadelake",
        isas: &[Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vnni],
    },
    Variant {
        name: "icelake",
        isas: &[
            Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vbmi, Avx512Vnni,
        ],
    },
    Variant {
        name: "cooperlake",
        isas: &[
            Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vnni, Avx512Bf16,
        ],
    },
    Variant {
        name: "zen4",
        isas: &[
            Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vbmi, Avx512Vnni, Avx512Bf16,
        ],
    },
    Variant {
        name: "alderlake",
        isas: &[Sse42, Avx, F16c, Fma, Avx2, Bmi2, AvxVnni],
    },
    Variant {
        name: "sapphirerapids",
        isas: &[
            Sse42, Avx, F16c, Fma, Avx2, Bmi2, Avx512, Avx512Vbmi, Avx512Vnni, Avx512Bf16, AmxTile,
            AmxInt8,
        ],
    },
];

/// The variant ggml calls `name`, if it is one of [`X86_VARIANTS`].
pub fn variant(name: &str) -> Option<&'static Variant> {
    X86_VARIANTS.iter().find(|v| v.name == name)
}

/// What the kernel said when this process asked for AMX tile data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum AmxPermission {
    /// Not asked: the CPU or the kernel does not offer AMX, or this is not Linux on x86-64.
    NotAsked,
    Granted,
    /// The kernel refused, with its error.
    Refused(String),
    /// The kernel granted it, but a tile instruction tried in a child process faulted (as on
    /// virtual machines that report AMX without running it): the AMX kernels would kill appld.
    Faults(String),
}

/// The facts [`select`] decides on: what the CPU offers as the kernel reports it, and what the
/// kernel enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFacts {
    /// The `flags` line of `/proc/cpuinfo`. The kernel leaves out features it does not support.
    pub flags: BTreeSet<String>,
    /// XCR0, from `xgetbv`: the register states the kernel saves and restores. `None` when the
    /// kernel has not enabled XSAVE, or off x86-64.
    pub xcr0: Option<u64>,
    pub amx: AmxPermission,
}

impl CpuFacts {
    /// Facts from the text of `/proc/cpuinfo` (the first `flags` line) and the given XCR0 and
    /// AMX answer. Tests build recorded machines with it.
    pub fn from_cpuinfo(cpuinfo: &str, xcr0: Option<u64>, amx: AmxPermission) -> CpuFacts {
        let flags = cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == "flags")
            .map(|(_, v)| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        CpuFacts { flags, xcr0, amx }
    }

    /// Reads the facts on this machine. When the CPU and kernel offer AMX, this asks the kernel
    /// for AMX permission for the calling process, which is what llama.cpp's AMX kernels need in
    /// that same process; the permission lasts for the life of the process.
    pub fn probe() -> CpuFacts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut facts = CpuFacts::from_cpuinfo(&cpuinfo, None, AmxPermission::NotAsked);
        // Linux lists `xsave` only when it runs with CR4.OSXSAVE set, which makes xgetbv legal.
        if facts.flags.contains("xsave") {
            facts.xcr0 = os::xcr0();
        }
        let amx_offered = [AmxTile, AmxInt8]
            .iter()
            .all(|i| i.cpuinfo_flags().iter().all(|f| facts.flags.contains(*f)))
            && facts.xcr0.is_some_and(|x| x & XCR0_TILES == XCR0_TILES);
        if amx_offered {
            facts.amx = match os::request_amx() {
                // Flags, XCR0 and the kernel's word are not enough: some machines grant all
                // three and still fault at the first tile instruction. Try one, in a child.
                AmxPermission::Granted => match os::amx_trial() {
                    Ok(()) => AmxPermission::Granted,
                    Err(why) => AmxPermission::Faults(why),
                },
                other => other,
            };
        }
        facts
    }
}

/// Why a variant can or cannot run here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "detail")]
pub enum Verdict {
    /// It runs here and is shipped.
    Runs,
    /// It would run here, but the package does not carry it.
    NotShipped,
    /// The CPU (as the kernel reports it) lacks these flags.
    MissingFlags(Vec<String>),
    /// The CPU has the instructions but the kernel does not enable their registers.
    StateNotEnabled(String),
    /// AMX is there and enabled, but the kernel refused this process permission to use it.
    AmxRefused(String),
}

/// One variant with its score and verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub variant: &'static str,
    pub score: u32,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The outcome of [`select`]: the chosen variant and every candidate, best score first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub chosen: Option<&'static str>,
    /// `Some` when an operator forced the choice (`APPL_CPU_VARIANT`).
    pub forced: Option<String>,
    pub xcr0: Option<String>,
    pub amx: AmxPermission,
    /// The known variants the package carries, best score first.
    pub shipped: Vec<&'static str>,
    pub candidates: Vec<Candidate>,
    /// Shipped files whose variant name this build does not know; never loaded.
    pub unknown_shipped: Vec<String>,
}

fn verdict(v: &Variant, facts: &CpuFacts, shipped: bool) -> Verdict {
    let missing: Vec<String> = v
        .isas
        .iter()
        .flat_map(|i| i.cpuinfo_flags())
        .filter(|f| !facts.flags.contains(**f))
        .map(|f| (*f).to_owned())
        .collect();
    if !missing.is_empty() {
        return Verdict::MissingFlags(missing);
    }
    let needed = v.isas.iter().fold(0, |acc, i| acc | i.xcr0_bits());
    if needed != 0 {
        match facts.xcr0 {
            None => {
                return Verdict::StateNotEnabled(
                    "the kernel has not enabled XSAVE, so it saves no AVX register state".into(),
                )
            }
            Some(x) if x & needed != needed => {
                return Verdict::StateNotEnabled(format!(
                    "XCR0 is {x:#x}: the kernel does not enable the {} register state (bits {:#x})",
                    state_name(needed & !x),
                    needed & !x
                ))
            }
            Some(_) => {}
        }
    }
    if v.isas.iter().any(|i| i.needs_amx_permission()) {
        match &facts.amx {
            AmxPermission::Granted => {}
            AmxPermission::NotAsked => {
                return Verdict::AmxRefused("AMX permission was not requested".into())
            }
            AmxPermission::Refused(e) | AmxPermission::Faults(e) => {
                return Verdict::AmxRefused(e.clone())
            }
        }
    }
    if shipped {
        Verdict::Runs
    } else {
        Verdict::NotShipped
    }
}

fn state_name(bits: u64) -> &'static str {
    if bits & XCR0_TILES != 0 {
        "AMX tile"
    } else if bits & XCR0_ZMM != 0 {
        "AVX-512"
    } else {
        "AVX"
    }
}

/// Picks the variant to load: the highest ggml score among the `shipped` variant names that run
/// here. With `forced`, that variant or none: a forced variant that cannot run is not loaded.
/// Whether a variant runs llama.cpp's AMX kernels. These are never chosen unless
/// `APPL_CPU_VARIANT` names them: on a KVM guest that reports AMX, enables its register state,
/// grants the permission and runs a tile instruction in a trial, llama.cpp's AMX matmul still
/// died with SIGILL at `tilezero` (appld's install test, 2026-11-30), so no check made before
/// loading can promise they are safe.
pub fn uses_amx(name: &str) -> bool {
    variant(name).is_some_and(|v| v.isas.iter().any(|i| i.needs_amx_permission()))
}

pub fn select(facts: &CpuFacts, shipped: &[String], forced: Option<&str>) -> Selection {
    let mut candidates: Vec<Candidate> = X86_VARIANTS
        .iter()
        .map(|v| Candidate {
            variant: v.name,
            score: v.score(),
            verdict: verdict(v, facts, shipped.iter().any(|s| s == v.name)),
        })
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.score));
    let runs = |c: &&Candidate| c.verdict == Verdict::Runs;
    let chosen = match forced {
        Some(name) => candidates
            .iter()
            .filter(runs)
            .find(|c| c.variant == name)
            .map(|c| c.variant),
        // AMX only when the operator names it (see `uses_amx`).
        None => candidates
            .iter()
            .filter(runs)
            .find(|c| !uses_amx(c.variant))
            .map(|c| c.variant),
    };
    Selection {
        chosen,
        forced: forced.map(str::to_owned),
        xcr0: facts.xcr0.map(|x| format!("{x:#x}")),
        amx: facts.amx.clone(),
        shipped: candidates
            .iter()
            .filter(|c| shipped.iter().any(|s| s == c.variant))
            .map(|c| c.variant)
            .collect(),
        candidates,
        unknown_shipped: shipped
            .iter()
            .filter(|s| variant(s).is_none())
            .cloned()
            .collect(),
    }
}

impl Selection {
    /// One line for logs and `applctl check`: the choice and why.
    pub fn summary(&self) -> String {
        let n = self.shipped.len();
        match (self.chosen, &self.forced) {
            (Some(v), Some(_)) => {
                format!("{v}, forced by APPL_CPU_VARIANT (this CPU and kernel run it)")
            }
            (Some(v), None) => {
                format!("{v}: the best of the {n} shipped variants that this CPU and kernel run")
            }
            (None, Some(f)) => match self.candidates.iter().find(|c| c.variant == f) {
                Some(c) => format!(
                    "none: APPL_CPU_VARIANT={f} cannot be used here: {}",
                    c.verdict.describe()
                ),
                None => format!("none: APPL_CPU_VARIANT={f} is not a variant this build knows"),
            },
            (None, None) if n == 0 => "none: no CPU variant libraries are shipped".to_owned(),
            (None, None) => {
                format!("none: none of the {n} shipped variants runs on this CPU and kernel")
            }
        }
    }

    /// The variants scoring above the chosen one that the CPU has the instructions for, each
    /// with the reason it was not chosen (the kernel, the AMX permission, or not shipped).
    pub fn skipped_better(&self) -> Vec<String> {
        let floor = self
            .chosen
            .and_then(|v| self.candidates.iter().find(|c| c.variant == v))
            .map_or(0, |c| c.score);
        self.candidates
            .iter()
            .filter(|c| c.score > floor)
            .filter(|c| match c.verdict {
                Verdict::MissingFlags(_) => false,
                Verdict::Runs => uses_amx(c.variant),
                _ => true,
            })
            .map(|c| match c.verdict {
                Verdict::Runs => format!(
                    "{}: runs here, but its AMX kernels are loaded only when APPL_CPU_VARIANT names it \
                     (llama.cpp's AMX matmul has died with SIGILL on machines that pass every check)",
                    c.variant
                ),
                _ => format!("{}: {}", c.variant, c.verdict.describe()),
            })
            .collect()
    }
}

impl Verdict {
    /// The verdict in words.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Runs => "runs here".into(),
            Verdict::NotShipped => "would run here, but this package does not carry it".into(),
            Verdict::MissingFlags(f) => format!("the CPU lacks {}", f.join(", ")),
            Verdict::StateNotEnabled(why) => why.clone(),
            Verdict::AmxRefused(why) => format!(
                "AMX cannot be used here ({why}); its tile instructions would die with SIGILL"
            ),
        }
    }
}

/// The file name prefix and suffix of a CPU variant library.
const PREFIX: &str = "libggml-cpu-";
const SUFFIX: &str = ".so";

/// The CPU variant libraries in `dir`, by variant name, sorted. A missing directory has none.
pub fn shipped_variants(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
        {
            found.push((v.to_owned(), entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Where a package keeps llama.cpp's libraries, relative to the binary that uses them:
/// `/usr/bin/appld` → `/usr/lib/appl`.
pub fn package_lib_dir(exe: &Path) -> Option<PathBuf> {
    Some(exe.parent()?.parent()?.join("lib").join("appl"))
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod os {
    use super::AmxPermission;

    pub fn xcr0() -> Option<u64> {
        let (lo, hi): (u32, u32);
        // SAFETY: `xgetbv` with ECX = 0 reads XCR0 into EDX:EAX and touches no memory. It is a
        // legal instruction when CR4.OSXSAVE is set, which the caller has established (the
        // kernel lists `xsave` in /proc/cpuinfo only when it runs with OSXSAVE).
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        Some((u64::from(hi) << 32) | u64::from(lo))
    }

    pub fn request_amx() -> AmxPermission {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, feature) takes two integers, reads and
        // writes no user memory, and only widens what this process may use.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if r == 0 {
            AmxPermission::Granted
        } else {
            AmxPermission::Refused(format!(
                "arch_prctl(ARCH_REQ_XCOMP_PERM): {}",
                std::io::Error::last_os_error()
            ))
        }
    }

    /// Runs `ldtilecfg`, `tilezero` and `tilerelease` in a forked child (which inherits the
    /// AMX permission) and says whether it survived. A fault kills only the child.
    pub fn amx_trial() -> Result<(), String> {
        // Palette 1 with all eight tiles at 16 rows of 64 bytes, as llama.cpp's AMX kernels
        // configure them: a machine may run tmm0 and still fault on a higher tile.
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t] = 64;
            cfg[48 + t] = 16;
        }
        // SAFETY: fork() in a process that may have other threads: the child runs only the three
        // instructions (no allocation, no locks) and then _exit(), which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!(
                "cannot fork to try an AMX instruction: {}",
                std::io::Error::last_os_error()
            ));
        }
        if pid == 0 {
            // SAFETY: the encodings of `ldtilecfg [rdi]` (VEX.128.NP.0F38.W0 49 /0),
            // `tilezero tmm0`..`tmm7` (VEX.128.F2.0F38.W0 49 C0+8n) and `tilerelease`
            // (VEX.128.NP.0F38.W0 49 C0). `rdi` points at the 64-byte configuration above, which ldtilecfg only
            // reads; the tile state is released before the child exits. If the CPU does not run
            // them, the child dies of SIGILL, which is what the parent is asking.
            unsafe {
                std::arch::asm!(
                    ".byte 0xc4, 0xe2, 0x78, 0x49, 0x07",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc0",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc8",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd0",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd8",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xe0",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xe8",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xf0",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xf8",
                    ".byte 0xc4, 0xe2, 0x78, 0x49, 0xc0",
                    in("rdi") cfg.as_ptr(),
                    options(readonly, nostack, preserves_flags),
                );
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited != pid {
            return Err(format!(
                "cannot wait for the AMX trial: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFSIGNALED(status) {
            Err(format!(
                "the kernel granted AMX, but a tile instruction (tilezero) tried in a child process \
                 died of signal {}: this machine reports AMX without running it",
                libc::WTERMSIG(status)
            ))
        } else {
            Err(format!("the AMX trial ended with status {status:#x}"))
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod os {
    use super::AmxPermission;

    pub fn xcr0() -> Option<u64> {
        None
    }

    pub fn request_amx() -> AmxPermission {
        AmxPermission::NotAsked
    }

    pub fn amx_trial() -> Result<(), String> {
        Err("AMX is tried only on Linux on x86-64".into())
    }
}
