//! `lbwnet info`: what this build runs on.
use anyhow::Result;
use tch::{Cuda, Device};

pub fn run() -> Result<()> {
    println!("lbwnet {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {}", libtorch_version());
    println!("cuda available: {}", Cuda::is_available());
    println!("cuda devices: {}", Cuda::device_count());
    println!("default device: {:?}", Device::cuda_if_available());
    println!("cpu threads: {}", tch::get_num_threads());
    Ok(())
}

/// The version of the libtorch this binary links; torch-sys records it at build time.
fn libtorch_version() -> String {
    option_env!("LBWNET_LIBTORCH_VERSION")
        .unwrap_or("unknown")
        .to_string()
}
