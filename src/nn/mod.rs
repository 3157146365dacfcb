//! Neural-network building blocks: quantize-on-forward layers and the backbones.
pub mod backbones;
pub mod flat;
pub mod qlayers;
pub mod weights;

pub use flat::{FlatParameters, QuantizedWeights};
pub use qlayers::{
    qconv2d, qlinear, FrozenQuantization, LayerStats, QConv2d, QLinear, QuantRegistry, QuantSlot,
};
