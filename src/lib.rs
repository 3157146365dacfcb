//! lbwnet: Faster R-CNN training with weights quantized to zero or powers of two (LBW-Net).
//!
//! One concept per module, in the spirit of torchvision's detection package:
//! `quant` (the quantizers), `nn` (quantize-on-forward layers and backbones), `detect`
//! (the Faster R-CNN parts), `data` (VOC reading, transforms, loader, synthetic data),
//! `eval` (VOC AP), `train` (loop, schedule, checkpoints), `experiments` (sweeps, tables),
//! `deploy` (the packed model file and inference from it).
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod deploy;
pub mod detect;
pub mod draw;
pub mod eval;
pub mod experiments;
pub mod fsutil;
pub mod machine;
pub mod malloc_policy;
pub mod nn;
pub mod npy;
pub mod progress;
pub mod quant;
pub mod torch_ext;
pub mod train;
