//! Batch norm with fixed statistics and affine parameters, as torchvision's
//! `FrozenBatchNorm2d`: detection batches are too small to estimate statistics, so the
//! pretrained ones are kept. All four tensors are non-trainable VarStore entries, so they
//! load by name and are saved in checkpoints but never reach the optimizer.
use tch::{nn, Tensor};

/// torchvision's `FrozenBatchNorm2d` default.
pub const EPS: f64 = 1e-5;

#[derive(Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

/// `<path>.{weight,bias,running_mean,running_var}`, initialized to the identity
/// (up to `1/sqrt(1 + eps)`) until weights are loaded.
pub fn frozen_batch_norm2d(path: &nn::Path, channels: i64) -> FrozenBatchNorm2d {
    FrozenBatchNorm2d {
        weight: path.ones_no_train("weight", &[channels]),
        bias: path.zeros_no_train("bias", &[channels]),
        running_mean: path.zeros_no_train("running_mean", &[channels]),
        running_var: path.ones_no_train("running_var", &[channels]),
    }
}

impl nn::Module for FrozenBatchNorm2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let scale = &self.weight * (&self.running_var + EPS).rsqrt();
        let shift = &self.bias - &self.running_mean * &scale;
        xs * scale.reshape([1, -1, 1, 1]) + shift.reshape([1, -1, 1, 1])
    }
}
