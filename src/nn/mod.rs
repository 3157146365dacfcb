//! Neural-network building blocks: quantize-on-forward layers and the backbones.
pub mod qlayers;

pub use qlayers::{qconv2d, qlinear, LayerStats, QConv2d, QLinear, QuantRegistry};
