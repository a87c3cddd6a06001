//! Placing a memory estimate on a machine: the devices' free memory and per-device costs from
//! the SKU profiles, the layer split across GPUs, and the refusal with the numbers.

use std::sync::OnceLock;

use super::{DevicePlan, DeviceRef, FitError, GpuLayers, MemoryEstimate, Placement};
use crate::inventory::{GpuInfo, Inventory};
use crate::profile::{Profile, ProfileSet};
use crate::units::{gib, MIB};

/// Planning factors for one device.
#[derive(Debug, Clone)]
struct DeviceSpec {
    device: DeviceRef,
    name: String,
    profile: Option<String>,
    free: u64,
    overhead: u64,
    reserve: u64,
    bandwidth_gbps: Option<f64>,
    efficiency: f64,
}

/// Defaults for a GPU without a profile: Ollama's 457 MiB overhead, llama.cpp `--fit`'s
/// 1024 MiB reserve (sizing-facts.md), the low end of the 0.5–0.7 efficiency band.
const UNKNOWN_GPU_OVERHEAD: u64 = 457 * MIB;
const UNKNOWN_RESERVE: u64 = 1024 * MIB;
const UNKNOWN_EFFICIENCY: f64 = 0.5;

fn gpu_spec(gpu: &GpuInfo, profile: Option<&Profile>) -> DeviceSpec {
    DeviceSpec {
        device: DeviceRef::Gpu(gpu.index),
        name: gpu.name.clone(),
        profile: profile.map(|p| p.id.clone()),
        free: gpu.vram_free_bytes,
        overhead: profile.map_or(UNKNOWN_GPU_OVERHEAD, |p| {
            p.tuning.runtime_overhead_mib * MIB
        }),
        reserve: profile.map_or(UNKNOWN_RESERVE, |p| p.tuning.reserve_mib * MIB),
        bandwidth_gbps: profile.map(|p| p.bandwidth_gbps),
        efficiency: profile.map_or(UNKNOWN_EFFICIENCY, |p| p.tuning.decode_efficiency),
    }
}

fn cpu_spec(inv: &Inventory, profile: Option<&Profile>) -> DeviceSpec {
    DeviceSpec {
        device: DeviceRef::Cpu,
        name: inv.cpu.model.clone(),
        profile: profile.map(|p| p.id.clone()),
        free: inv.memory.available_bytes,
        overhead: profile.map_or(0, |p| p.tuning.runtime_overhead_mib * MIB),
        reserve: profile.map_or(UNKNOWN_RESERVE, |p| p.tuning.reserve_mib * MIB),
        bandwidth_gbps: inv
            .cpu
            .mem_bandwidth_gbps
            .or(profile.map(|p| p.bandwidth_gbps)),
        efficiency: profile.map_or(UNKNOWN_EFFICIENCY, |p| p.tuning.decode_efficiency),
    }
}

fn embedded_profiles() -> Option<&'static ProfileSet> {
    static SET: OnceLock<Option<ProfileSet>> = OnceLock::new();
    SET.get_or_init(|| match ProfileSet::embedded() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(target: "sizing", error = %e, "embedded profiles are invalid");
            None
        }
    })
    .as_ref()
}

/// Places `est` on the machine in `inv`, using the embedded SKU profiles. See [`fit_with`].
pub fn fit(
    est: &MemoryEstimate,
    inv: &Inventory,
    gpu_layers: GpuLayers,
) -> Result<Placement, FitError> {
    let empty = ProfileSet { profiles: vec![] };
    fit_with(est, inv, embedded_profiles().unwrap_or(&empty), gpu_layers)
}

/// Places `est` on the machine in `inv`.
///
/// - `Auto` with GPUs: every layer and the output on the GPUs, split by free memory (falling
///   back to filling GPUs in order); if that does not fit, a [`FitError`] with the numbers and
///   the largest `gpu_layers` that would. `Auto` without GPUs: everything in host RAM.
/// - `N(n)`: the last `n` layers on the GPUs (all of them plus the output when
///   `n > n_layer`), the rest in host RAM; both sides must fit.
pub fn fit_with(
    est: &MemoryEstimate,
    inv: &Inventory,
    profiles: &ProfileSet,
    gpu_layers: GpuLayers,
) -> Result<Placement, FitError> {
    let gpus: Vec<DeviceSpec> = inv
        .gpus
        .iter()
        .map(|g| gpu_spec(g, profiles.for_gpu(g)))
        .collect();
    let cpu = cpu_spec(inv, profiles.cpu());
    let n_layer = est.n_layer;
    let n = match gpu_layers {
        GpuLayers::Auto if gpus.is_empty() => 0,
        GpuLayers::Auto => n_layer + 1,
        GpuLayers::N(_) if gpus.is_empty() => 0,
        GpuLayers::N(n) => n.min(n_layer + 1),
    };
    let plan = place(est, &gpus, &cpu, n);
    if plan.devices.iter().all(DevicePlan::fits) {
        return Ok(plan);
    }
    let max_gpu_layers = if gpus.is_empty() {
        None
    } else {
        (0..n).rev().find(|&k| {
            place(est, &gpus, &cpu, k)
                .devices
                .iter()
                .all(DevicePlan::fits)
        })
    };
    let short: Vec<String> = plan
        .devices
        .iter()
        .filter(|d| !d.fits())
        .map(|d| {
            format!(
                "needs {}, {} free on {} ({})",
                gib(d.need),
                gib(d.free),
                d.device,
                d.name
            )
        })
        .collect();
    let mut message = short.join("; ");
    if plan
        .devices
        .iter()
        .filter(|d| matches!(d.device, DeviceRef::Gpu(_)))
        .count()
        > 1
    {
        let need: u64 = plan.devices.iter().map(|d| d.need).sum();
        let free: u64 = plan.devices.iter().map(|d| d.free).sum();
        message.push_str(&format!(
            " (all devices: needs {}, {} free)",
            gib(need),
            gib(free)
        ));
    }
    match max_gpu_layers {
        Some(k) if k > 0 => message.push_str(&format!(
            "; gpu_layers = {k} would fit (partial offload, slower), or use a smaller context, fewer slots or a q8_0 KV cache"
        )),
        _ => message.push_str("; use a smaller context, fewer slots, a q8_0 KV cache or a smaller quantization"),
    }
    Err(FitError {
        message,
        devices: plan.devices,
        max_gpu_layers,
    })
}

/// Builds the plan for `n` offloaded layers (llama.cpp semantics) without judging it.
fn place(est: &MemoryEstimate, gpus: &[DeviceSpec], cpu: &DeviceSpec, n: u32) -> Placement {
    let n_layer = est.n_layer;
    let n = if gpus.is_empty() {
        0
    } else {
        n.min(n_layer + 1)
    };
    let on_gpu = n.min(n_layer);
    let gpu_start = n_layer - on_gpu;
    let output_on_gpu = n > n_layer;

    let split = split_layers(est, gpus, gpu_start, output_on_gpu);
    let mut devices = Vec::new();
    let mut tensor_split = vec![0f32; gpus.len()];
    let mut main_gpu = None;
    let mut first = gpu_start;
    let last_used = split.iter().rposition(|&c| c > 0);
    for (g, (spec, &count)) in gpus.iter().zip(&split).enumerate() {
        let layers = (first, first + count);
        first += count;
        let holds_output = output_on_gpu && Some(g) == last_used;
        if count == 0 && !holds_output {
            continue;
        }
        if on_gpu > 0 {
            tensor_split[g] = count as f32 / on_gpu as f32;
        }
        if holds_output {
            main_gpu = match spec.device {
                DeviceRef::Gpu(i) => Some(i),
                DeviceRef::Cpu => None,
            };
        }
        devices.push(device_plan(est, spec, layers, holds_output, false));
    }
    devices.push(device_plan(est, cpu, (0, gpu_start), !output_on_gpu, true));
    Placement {
        n_gpu_layers: n,
        tensor_split,
        main_gpu,
        devices,
        n_layer,
        slots: est.slots,
    }
}

fn device_plan(
    est: &MemoryEstimate,
    spec: &DeviceSpec,
    layers: (u32, u32),
    holds_output: bool,
    is_host: bool,
) -> DevicePlan {
    let range = layers.0 as usize..layers.1 as usize;
    let layer_w: u64 = est.layers[range.clone()].iter().map(|l| l.weights).sum();
    let kv: u64 = est.layers[range].iter().map(|l| l.kv).sum();
    let has_layers = layers.1 > layers.0;
    let out_w = if holds_output { est.output_weights } else { 0 };
    // The host always keeps the token embedding (llama.cpp's input layer); when the output is
    // on the host and tied to the embedding, that one copy serves both.
    let host_w = match (is_host, holds_output && est.tied_embeddings) {
        (true, true) => est.output_weights,
        (true, false) => est.input_weights + out_w,
        (false, _) => out_w,
    };
    let weights = layer_w + host_w;
    let compute = if holds_output {
        est.compute
    } else if has_layers {
        est.compute_other
    } else {
        0
    } + if is_host { est.output_buffer } else { 0 };
    // A GPU's runtime context exists whenever it is used; the host reserve always applies.
    let used = has_layers || holds_output || is_host;
    let overhead = if used { spec.overhead } else { 0 };
    let reserve = if used { spec.reserve } else { 0 };
    DevicePlan {
        device: spec.device,
        name: spec.name.clone(),
        profile: spec.profile.clone(),
        layers,
        holds_output,
        weights,
        kv,
        compute,
        overhead,
        reserve,
        need: weights + kv + compute + overhead + reserve,
        free: spec.free,
        weights_read: layer_w + out_w,
        bandwidth_gbps: spec.bandwidth_gbps,
        efficiency: spec.efficiency,
    }
}

/// Splits layers `start..n_layer` over the GPUs: first in proportion to each GPU's free memory
/// after its fixed costs (as llama.cpp's default split is proportional to free memory); if some
/// GPU would then overflow, by filling GPUs in order instead.
fn split_layers(
    est: &MemoryEstimate,
    gpus: &[DeviceSpec],
    start: u32,
    output_on_gpu: bool,
) -> Vec<u32> {
    let g = gpus.len();
    if g == 0 {
        return vec![];
    }
    let count = est.n_layer - start;
    let layer_cost = |il: u32| {
        let l = est.layers[il as usize];
        l.weights + l.kv
    };
    let fixed = |i: usize| {
        let s = &gpus[i];
        let out = if output_on_gpu && i == g - 1 {
            est.output_weights + est.compute - est.compute_other
        } else {
            0
        };
        s.overhead + s.reserve + est.compute_other + out
    };
    let cap = |i: usize| gpus[i].free.saturating_sub(fixed(i));

    // Proportional split by capacity.
    let caps: Vec<u64> = (0..g).map(cap).collect();
    let total_cap: u128 = caps.iter().map(|&c| u128::from(c)).sum();
    let mut prop = vec![0u32; g];
    let mut assigned = 0u32;
    let mut acc = 0u128;
    for (i, slot) in prop.iter_mut().enumerate() {
        acc += u128::from(caps[i]);
        // Cumulative share of the layers up to this GPU; with no capacity anywhere, all go to
        // the last GPU (and the fit check reports it).
        let upto = match (acc * u128::from(count)).checked_div(total_cap) {
            Some(v) => u32::try_from(v).unwrap_or(count),
            None if i == g - 1 => count,
            None => 0,
        };
        *slot = upto - assigned;
        assigned = upto;
    }
    let fits = |split: &[u32]| {
        let mut il = start;
        split.iter().enumerate().all(|(i, &c)| {
            let used: u64 = (il..il + c).map(layer_cost).sum();
            il += c;
            used <= caps[i]
        })
    };
    if fits(&prop) {
        return prop;
    }
    // Fill in order; whatever is left goes to the last GPU (and will not fit).
    let mut fill = vec![0u32; g];
    let mut il = start;
    for i in 0..g {
        let mut used = 0u64;
        while il < est.n_layer && (i == g - 1 || used + layer_cost(il) <= caps[i]) {
            used += layer_cost(il);
            fill[i] += 1;
            il += 1;
        }
    }
    fill
}
