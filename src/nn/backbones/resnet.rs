//! ResNet-50 C4 (He et al.), torchvision's v1.5 bottleneck (stride on the 3x3 conv) with
//! frozen batch norm everywhere: conv1..layer3 are the trunk (stride 16, 1024 channels),
//! layer4 (stride 2 on the 14x14 pooled RoIs) plus global average pooling is the RoI head.
//! Names are torchvision's: `conv1.weight`, `bn1.*`, `layer{1..4}.{i}.{conv,bn}{1,2,3}.*`,
//! `layer{1..4}.0.downsample.{0,1}.*`.
use super::frozen_bn::{frozen_batch_norm2d, FrozenBatchNorm2d};
use super::ChannelsLast;
use super::{kaiming_conv, name_prefix, BackboneParts, LayerQuant};
use crate::nn::{qconv2d, QConv2d, QuantRegistry};
use crate::quant::QuantSpec;
use tch::nn::{self, Module};
use tch::Tensor;

/// Bottleneck output channels are `EXPANSION * planes`.
pub const EXPANSION: i64 = 4;
pub const STEM_CHANNELS: i64 = 64;
/// (name, planes, blocks, stride of the first block) of the four stages.
pub const STAGES: [(&str, i64, usize, i64); 4] = [
    ("layer1", 64, 3, 1),
    ("layer2", 128, 4, 2),
    ("layer3", 256, 6, 2),
    ("layer4", 512, 3, 2),
];

pub const TRUNK_CHANNELS: i64 = 1024;
pub const HEAD_DIM: i64 = 2048;
pub const POOL_SIZE: i64 = 14;
/// torchvision's `trainable_layers=3`: the stem and layer1 stay fixed.
const FROZEN: [&str; 3] = ["conv1", "bn1", "layer1"];

#[derive(Debug)]
struct Bottleneck {
    conv1: QConv2d,
    bn1: FrozenBatchNorm2d,
    conv2: QConv2d,
    bn2: FrozenBatchNorm2d,
    conv3: QConv2d,
    bn3: FrozenBatchNorm2d,
    downsample: Option<(QConv2d, FrozenBatchNorm2d)>,
}

fn bottleneck(
    path: &nn::Path,
    registry: &QuantRegistry,
    spec: Option<QuantSpec>,
    c_in: i64,
    planes: i64,
    stride: i64,
) -> Bottleneck {
    let c_out = planes * EXPANSION;
    let downsample = (stride != 1 || c_in != c_out).then(|| {
        let p = path / "downsample";
        (
            qconv2d(
                &(&p / 0),
                registry,
                spec,
                c_in,
                c_out,
                1,
                kaiming_conv(stride, 0),
            ),
            frozen_batch_norm2d(&(&p / 1), c_out),
        )
    });
    Bottleneck {
        conv1: qconv2d(
            &(path / "conv1"),
            registry,
            spec,
            c_in,
            planes,
            1,
            kaiming_conv(1, 0),
        ),
        bn1: frozen_batch_norm2d(&(path / "bn1"), planes),
        conv2: qconv2d(
            &(path / "conv2"),
            registry,
            spec,
            planes,
            planes,
            3,
            kaiming_conv(stride, 1),
        ),
        bn2: frozen_batch_norm2d(&(path / "bn2"), planes),
        conv3: qconv2d(
            &(path / "conv3"),
            registry,
            spec,
            planes,
            c_out,
            1,
            kaiming_conv(1, 0),
        ),
        bn3: frozen_batch_norm2d(&(path / "bn3"), c_out),
        downsample,
    }
}

impl Module for Bottleneck {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = self.bn1.forward(&self.conv1.forward(xs)).relu();
        let ys = self.bn2.forward(&self.conv2.forward(&ys)).relu();
        let ys = self.bn3.forward(&self.conv3.forward(&ys));
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(xs)),
            None => xs.shallow_clone(),
        };
        (ys + identity).relu()
    }
}

/// One stage (`layerN`) as a sequence of bottlenecks; returns it and its output channels.
fn stage(
    root: &nn::Path,
    registry: &QuantRegistry,
    spec: Option<QuantSpec>,
    c_in: i64,
    (name, planes, blocks, stride): (&str, i64, usize, i64),
) -> (nn::Sequential, i64) {
    let path = root / name;
    let mut seq = nn::seq();
    let mut c = c_in;
    for i in 0..blocks {
        let block_stride = if i == 0 { stride } else { 1 };
        seq = seq.add(bottleneck(
            &(&path / i),
            registry,
            spec,
            c,
            planes,
            block_stride,
        ));
        c = planes * EXPANSION;
    }
    (seq, c)
}

pub fn resnet50_c4(root: &nn::Path, quant: &LayerQuant, registry: &QuantRegistry) -> BackboneParts {
    let conv1 = qconv2d(
        &(root / "conv1"),
        registry,
        quant.first_conv(),
        3,
        STEM_CHANNELS,
        7,
        kaiming_conv(2, 3),
    );
    let bn1 = frozen_batch_norm2d(&(root / "bn1"), STEM_CHANNELS);
    let mut trunk = nn::seq()
        .add(conv1)
        .add(bn1)
        .add_fn(|xs| xs.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
    let mut channels = STEM_CHANNELS;
    for config in &STAGES[..3] {
        let (layer, c_out) = stage(root, registry, quant.layer(), channels, *config);
        trunk = trunk.add(layer);
        channels = c_out;
    }
    debug_assert_eq!(channels, TRUNK_CHANNELS);

    let (layer4, head_dim) = stage(root, registry, quant.layer(), channels, STAGES[3]);
    debug_assert_eq!(head_dim, HEAD_DIM);
    let head = nn::seq()
        .add(layer4)
        .add_fn(|xs| xs.mean_dim(&[2i64, 3][..], false, None));

    BackboneParts {
        trunk: Box::new(ChannelsLast(trunk)),
        trunk_channels: TRUNK_CHANNELS,
        head: Box::new(ChannelsLast(head)),
        head_dim: HEAD_DIM,
        pool_size: POOL_SIZE,
        frozen_prefixes: FROZEN
            .iter()
            .map(|name| name_prefix(&(root / *name)))
            .collect(),
    }
}
