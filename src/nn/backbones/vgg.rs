//! VGG-16 (Simonyan & Zisserman) as py-faster-rcnn uses it: conv1_1..conv5_3 with ReLU
//! and without the last max-pool (stride 16, 512 channels), fc6/fc7 as the RoI head.
//! Names are torchvision's: `features.{0,2,5,..,28}.{weight,bias}`, `classifier.{0,3}.*`.
use super::{name_prefix, BackboneParts, ChannelsLast, LayerQuant};
use crate::nn::{qconv2d, qlinear, QuantRegistry};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};

/// Output channels of each 3x3 conv; `None` is a 2x2 max-pool. Indices into torchvision's
/// `features` Sequential follow from this list (each conv is followed by a ReLU).
pub const FEATURES: [Option<i64>; 17] = [
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
/// conv1_x..conv3_x (the first 10 entries of FEATURES, through the third max-pool) run
/// channels-last on the CPU, conv4_x and conv5_x in ordinary NCHW. With libtorch 2.11 on
/// 2 threads at 600x1000, NHWC was faster per layer (forward + backward with its ReLU) up
/// to conv3 (conv1_2 938 against 1355 ms) and slower from conv4 on (conv4_2 814 against
/// 686 ms). The whole trunk's forward + backward, medians of 7 in each of two runs with
/// this binary's malloc policy: split after the third pool 5.6 and 5.8 s, all NHWC 5.9
/// and 6.2 s, all NCHW 6.1 s (first run), other split points 5.9 to 6.2 s (second run).
const CHANNELS_LAST_FEATURES: usize = 10;
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

/// Where the next entry of FEATURES goes: its index in torchvision's `features` and its
/// input channels.
struct FeatureCursor {
    index: i64,
    c_in: i64,
}

impl FeatureCursor {
    /// `seq` followed by `layers` (each conv with its ReLU).
    fn append(
        &mut self,
        mut seq: nn::SequentialT,
        layers: &[Option<i64>],
        features: &nn::Path,
        quant: &LayerQuant,
        registry: &QuantRegistry,
    ) -> nn::SequentialT {
        for layer in layers {
            match *layer {
                Some(c_out) => {
                    let spec = if self.index == 0 {
                        quant.first_conv()
                    } else {
                        quant.layer()
                    };
                    let path = features / self.index;
                    let conv = qconv2d(&path, registry, spec, self.c_in, c_out, 3, conv_config());
                    seq = seq.add(conv).add_fn(|xs| xs.relu());
                    self.index += 2;
                    self.c_in = c_out;
                }
                None => {
                    seq = seq.add_fn(|xs| xs.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
                    self.index += 1;
                }
            }
        }
        seq
    }
}

pub fn vgg16(root: &nn::Path, quant: &LayerQuant, registry: &QuantRegistry) -> BackboneParts {
    let features = root / "features";
    let (early, late) = FEATURES.split_at(CHANNELS_LAST_FEATURES);
    let mut next = FeatureCursor { index: 0, c_in: 3 };
    let early = next.append(nn::seq_t(), early, &features, quant, registry);
    let late = next.append(nn::seq_t(), late, &features, quant, registry);
    let trunk = nn::seq_t().add(ChannelsLast(early)).add(late);

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
        trunk: Box::new(trunk),
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
