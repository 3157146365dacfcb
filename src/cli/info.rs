//! `lbwnet info`: what this build runs on, and what besides a config decides a run's
//! numbers (the same record a run keeps in `metrics.json`).
use crate::machine::Machine;
use anyhow::Result;
use tch::{Cuda, Device};

pub fn run() -> Result<()> {
    let device = Device::cuda_if_available();
    let machine = Machine::current(device);
    println!("lbwnet {}", machine.lbwnet);
    println!("libtorch {}", machine.torch);
    println!("cuda available: {}", Cuda::is_available());
    println!("cuda devices: {}", Cuda::device_count());
    println!("default device: {:?}", device);
    println!("device: {}", machine.device);
    println!("cpu: {}", machine.cpu);
    println!("aten cpu capability: {}", machine.aten_cpu_capability);
    println!("onednn isa: {}", machine.onednn_isa);
    println!("cpu threads: {}", machine.threads);
    println!(
        "tf32: cudnn {}, cublas {}",
        machine.tf32_cudnn, machine.tf32_cublas
    );
    println!("deterministic algorithms: {}", machine.deterministic);
    for (name, value) in &machine.isa_caps {
        println!("instruction-set cap: {name}={value}");
    }
    Ok(())
}
