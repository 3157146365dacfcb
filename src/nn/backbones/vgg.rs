//! VGG-16 (Simonyan & Zisserman) as py-faster-rcnn uses it: conv1_1..conv5_3 with ReLU
//! and without the last max-pool (stride 16, 512 channels), fc6/fc7 as the RoI head.
//! Names are torchvision's: `features.{0,2,5,..,28}.{weight,bias}`, `classifier.{0,3}.*`.
use super::{name_prefix, BackboneParts, ChannelsLast, LayerQuant};
use crate::nn::{qconv2d, qlinear, QuantRegistry};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};

/// Output channels of each 3x3 conv; `None` is a 2x2 max-pool. Indices into torchvision's
/// `features` Sequential follow from this list (each conv is followed by a ReLU).
const FEATURES: [Option<i64>; 17] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
];

pub const TRUNK_CHANNELS: i64 = 512;
pub const HEAD_DIM: i64 = 4096;
pub const POOL_SIZE: i64 = 7;
const DROPOUT: f64 = 0.5;
/// conv1_x and conv2_x stay fixed when fine-tuning from ImageNet, as in py-faster-rcnn.
const FROZEN_FEATURES: [usize; 4] = [0, 2, 5, 7];

/// torchvision's VGG initialization: Kaiming normal (fan-out) convs, N(0, 0.01) fcs,
/// zero biases.
fn conv_config() -> nn::ConvConfig {
    nn::ConvConfig {
        padding: 1,
        ws_init: Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        },
        bs_init: Init::Const(0.0),
        ..Default::default()
    }
}

fn linear_config() -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        },
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    }
}

pub fn vgg16(root: &nn::Path, quant: &LayerQuant, registry: &QuantRegistry) -> BackboneParts {
    let features = root / "features";
    let mut trunk = nn::seq_t();
    let mut index = 0;
    let mut c_in = 3;
    for layer in FEATURES {
        match layer {
            Some(c_out) => {
                let spec = if index == 0 {
                    quant.first_conv()
                } else {
                    quant.layer()
                };
                let conv = qconv2d(
                    &(&features / index),
                    registry,
                    spec,
                    c_in,
                    c_out,
                    3,
                    conv_config(),
                );
                trunk = trunk.add(conv).add_fn(|xs| xs.relu());
                index += 2;
                c_in = c_out;
            }
            None => {
                trunk = trunk.add_fn(|xs| xs.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
                index += 1;
            }
        }
    }

    let classifier = root / "classifier";
    let flat = TRUNK_CHANNELS * POOL_SIZE * POOL_SIZE;
    let fc6 = qlinear(
        &(&classifier / 0),
        registry,
        quant.layer(),
        flat,
        HEAD_DIM,
        linear_config(),
    );
    let fc7 = qlinear(
        &(&classifier / 3),
        registry,
        quant.layer(),
        HEAD_DIM,
        HEAD_DIM,
        linear_config(),
    );
    let head = nn::seq_t()
        .add_fn(|xs| xs.flatten(1, -1))
        .add(fc6)
        .add_fn(|xs| xs.relu())
        .add_fn_t(|xs, train| xs.dropout(DROPOUT, train))
        .add(fc7)
        .add_fn(|xs| xs.relu())
        .add_fn_t(|xs, train| xs.dropout(DROPOUT, train));

    BackboneParts {
        trunk: Box::new(ChannelsLast(trunk)),
        trunk_channels: TRUNK_CHANNELS,
        head: Box::new(head),
        head_dim: HEAD_DIM,
        pool_size: POOL_SIZE,
        frozen_prefixes: FROZEN_FEATURES
            .iter()
            .map(|i| name_prefix(&(&features / *i)))
            .collect(),
    }
}
