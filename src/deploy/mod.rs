//! Shipping a trained model: the packed low-bit model file (`lbwnet export`), inference
//! from it (`lbwnet detect`, `lbwnet eval --model`, `lbwnet bench detect`) and its
//! per-layer report (`lbwnet inspect`).
//!
//! A quantized conv / fc weight is stored as its b-bit codes and f32 alpha, everything
//! else as f32 ([`format`]). Loading decodes the weights once into a Faster R-CNN built in
//! float ([`model`]): the forward pass never quantizes, and on the CPU it computes exactly
//! what the training-time model computes in evaluation (its forward uses Q(W) itself
//! there), so the detections are the same to the byte.
pub mod calibrate;
pub mod export;
pub mod format;
pub mod images;
pub mod inspect;
pub mod model;
pub mod onnx;

pub use export::{export_run, ExportSummary};
pub use format::{ModelFile, ModelMeta, FORMAT_VERSION};
pub use model::{DeployedModel, Detection};
