//! What decides a run's bits besides its config: the CPU and the instruction sets libtorch
//! dispatches to, the thread count, the libtorch and lbwnet versions, and the device with
//! its TF32 and deterministic settings. Runs record it in `metrics.json` and `summary.md`
//! and `lbwnet info` prints it, so two results can be told apart by where they came from
//! (README "Reproducibility").
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::Device;

/// Environment variables that lower the instruction sets ATen, oneDNN and MKL use.
const ISA_CAPS: [&str; 4] = [
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
];

/// oneDNN's x86 instruction-set levels, lowest first (its `ONEDNN_MAX_CPU_ISA` names).
const ONEDNN_ISAS: [&str; 7] = [
    "sse41",
    "avx",
    "avx2",
    "avx2_vnni",
    "avx512_core",
    "avx512_core_vnni",
    "avx512_core_bf16",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's model name (`/proc/cpuinfo`), or the architecture where it has none.
    pub cpu: String,
    /// The vector instruction set ATen's CPU kernels dispatch to (`DEFAULT`, `AVX2`,
    /// `AVX512`, ...).
    pub aten_cpu_capability: String,
    /// oneDNN's instruction set for convolutions: the highest level this CPU supports,
    /// lowered by `ONEDNN_MAX_CPU_ISA` as oneDNN lowers it.
    pub onednn_isa: String,
    /// libtorch's intra-op CPU threads.
    pub threads: i32,
    pub torch: String,
    pub lbwnet: String,
    /// `cpu` or `cuda:N (<GPU name>)`.
    pub device: String,
    /// Whether cuDNN convolutions and cuBLAS matmuls may round through TF32 (CUDA only).
    pub tf32_cudnn: bool,
    pub tf32_cublas: bool,
    /// libtorch's deterministic algorithms (`train.deterministic`).
    pub deterministic: bool,
    /// The instruction-set caps set in the environment (name: value), if any.
    pub isa_caps: BTreeMap<String, String>,
}

impl Machine {
    /// This process's machine and settings, for work on `device`.
    pub fn current(device: Device) -> Self {
        let (tf32_cudnn, tf32_cublas) = crate::torch_ext::tf32_allowed();
        Self {
            cpu: cpu_model(),
            aten_cpu_capability: crate::torch_ext::cpu_capability(),
            onednn_isa: onednn_isa(),
            threads: tch::get_num_threads(),
            torch: option_env!("LBWNET_LIBTORCH_VERSION")
                .unwrap_or("unknown")
                .to_string(),
            lbwnet: env!("CARGO_PKG_VERSION").to_string(),
            device: describe_device(device),
            tf32_cudnn,
            tf32_cublas,
            deterministic: crate::torch_ext::deterministic_algorithms(),
            isa_caps: ISA_CAPS
                .iter()
                .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
                .collect(),
        }
    }

    /// One Markdown bullet per field, for `summary.md`.
    pub fn to_markdown(&self) -> String {
        let mut text = format!(
            "- cpu: {} (ATen {}, oneDNN {}), {} thread(s)\n- device: {}",
            self.cpu, self.aten_cpu_capability, self.onednn_isa, self.threads, self.device
        );
        if self.device != "cpu" {
            text += &format!(
                ", TF32 cuDNN {} / cuBLAS {}",
                on_off(self.tf32_cudnn),
                on_off(self.tf32_cublas)
            );
        }
        text += &format!(
            ", deterministic algorithms {}\n- libtorch {}, lbwnet {}\n",
            on_off(self.deterministic),
            self.torch,
            self.lbwnet
        );
        if !self.isa_caps.is_empty() {
            let caps: Vec<String> = self
                .isa_caps
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            text += &format!("- instruction-set caps: {}\n", caps.join(" "));
        }
        text
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn describe_device(device: Device) -> String {
    match device {
        Device::Cuda(index) => match gpu_name(index) {
            Some(name) => format!("cuda:{index} ({name})"),
            None => format!("cuda:{index}"),
        },
        _ => "cpu".to_string(),
    }
}

/// The highest oneDNN level the CPU supports, then `ONEDNN_MAX_CPU_ISA` (or its older
/// name) as a ceiling.
fn onednn_isa() -> String {
    let supported = supported_onednn_level();
    let cap = ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"]
        .iter()
        .find_map(|name| std::env::var(name).ok());
    let Some(cap) = cap else {
        return supported.to_string();
    };
    match ONEDNN_ISAS
        .iter()
        .position(|isa| isa.eq_ignore_ascii_case(cap.trim()))
    {
        Some(cap_level) => {
            let level = ONEDNN_ISAS.iter().position(|isa| *isa == supported);
            ONEDNN_ISAS[level.map_or(cap_level, |l| l.min(cap_level))].to_string()
        }
        None => format!("{supported} (ONEDNN_MAX_CPU_ISA={cap})"),
    }
}

#[cfg(target_arch = "x86_64")]
fn supported_onednn_level() -> &'static str {
    use std::arch::is_x86_feature_detected as has;
    let avx512_core = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
    if avx512_core && has!("avx512bf16") {
        "avx512_core_bf16"
    } else if avx512_core && has!("avx512vnni") {
        "avx512_core_vnni"
    } else if avx512_core {
        "avx512_core"
    } else if has!("avxvnni") {
        "avx2_vnni"
    } else if has!("avx2") {
        "avx2"
    } else if has!("avx") {
        "avx"
    } else {
        "sse41"
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn supported_onednn_level() -> &'static str {
    std::env::consts::ARCH
}

/// The CUDA driver's name for device `index` (as `CUDA_VISIBLE_DEVICES` numbers them),
/// through `libcuda.so.1`, which every CUDA machine has; None where it is missing.
fn gpu_name(index: usize) -> Option<String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    // SAFETY: dlopen/dlsym with NUL-terminated names; the symbols have the CUDA driver
    // API's documented signatures, and the library stays loaded (never dlclosed).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
        if lib.is_null() {
            return None;
        }
        let symbol = |name: &std::ffi::CStr| {
            let ptr = libc::dlsym(lib, name.as_ptr());
            (!ptr.is_null()).then_some(ptr)
        };
        let init: CuInit = std::mem::transmute(symbol(c"cuInit")?);
        let device_get: CuDeviceGet = std::mem::transmute(symbol(c"cuDeviceGet")?);
        let get_name: CuDeviceGetName = std::mem::transmute(symbol(c"cuDeviceGetName")?);
        let mut device = 0;
        if init(0) != 0 || device_get(&mut device, i32::try_from(index).ok()?) != 0 {
            return None;
        }
        let mut name = [0 as std::ffi::c_char; 256];
        if get_name(name.as_mut_ptr(), name.len() as i32, device) != 0 {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_this_cpu_and_the_thread_count() {
        let machine = Machine::current(Device::Cpu);
        assert!(!machine.cpu.is_empty());
        assert!(!machine.aten_cpu_capability.is_empty());
        assert_eq!(machine.device, "cpu");
        assert_eq!(machine.threads, tch::get_num_threads());
        assert!(machine.to_markdown().contains(&machine.cpu));
    }
}
