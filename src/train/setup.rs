//! What every command that runs a model needs first: the device, libtorch's threads, and
//! the model with its variables (training, evaluation, sweeps, benchmarks).
use crate::config::{DeviceChoice, ExperimentConfig};
use crate::detect::faster_rcnn::FasterRcnn;
use crate::train::checkpoint;
use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::Device;

/// Applies `train.threads` to libtorch's CPU thread pool.
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("key `train.device`: cuda requested but no CUDA device is available");
            }
            Device::Cuda(0)
        }
    })
}

/// A model with its variables on `device`. With `initialize`, pretrained backbone weights
/// and `train.init_from` are loaded (a resumed run or an evaluation loads its checkpoint
/// instead). Layers a pretrained backbone keeps fixed are frozen either way.
///
/// libtorch's TF32 flags are set from the config first (`train.tf32`, off under
/// `train.deterministic`), so training, evaluation and the benchmarks run a model under
/// its config's numerics. They are process-wide: the last model built decides.
pub fn build_model(
    cfg: &ExperimentConfig,
    num_classes: usize,
    device: Device,
    initialize: bool,
) -> Result<(VarStore, FasterRcnn)> {
    crate::train::determinism::set_tf32(crate::train::determinism::tf32_for(&cfg.train));
    let vs = VarStore::new(device);
    let model = FasterRcnn::new(&vs.root(), cfg, num_classes)?;
    if let Some(weights) = &cfg.model.backbone_weights {
        if initialize {
            crate::nn::weights::load_by_name(&vs, weights, "backbone.")?;
        }
        crate::nn::weights::freeze_by_prefix(&vs, &model.frozen_prefixes);
    }
    if let (true, Some(init)) = (initialize, &cfg.train.init_from) {
        let weights = checkpoint::resolve_weights(init)?;
        checkpoint::load_weights(&weights, &vs)?;
        tracing::info!("initialized from {}", weights.display());
    }
    Ok((vs, model))
}
