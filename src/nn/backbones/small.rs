//! A small backbone that trains from scratch on CPU-scale data: four stages of
//! conv3x3-GroupNorm-ReLU blocks with `[w, 2w, 4w, 8w]` channels, each stage opening with
//! a stride-2 conv (stride 16 in all), and a two-fc RoI head on 7x7 pooled features.
//! GroupNorm rather than batch norm, so it works at one image per batch.
//!
//! Names, in torchvision's style: block `i` (counted over all stages) is
//! `features.{i}.conv.weight` and `features.{i}.norm.{weight,bias}`; the head is
//! `classifier.0.*` and `classifier.2.*` (the indices of its fcs in `Linear, ReLU, Linear,
//! ReLU`).
use super::{kaiming_conv, BackboneParts, LayerQuant};
use crate::nn::{qconv2d, qlinear, QConv2d, QuantRegistry};
use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::Tensor;

/// Conv blocks per stage; the first of each has stride 2. The extra block at stride 16
/// doubles the receptive field (31 -> 63 px) for about 40% more time; more blocks at the
/// early, large-resolution stages would cost most.
pub const BLOCKS_PER_STAGE: [usize; 4] = [1, 1, 1, 2];
/// Channel multipliers of the stages, times `small_width`.
pub const STAGE_WIDTHS: [i64; 4] = [1, 2, 4, 8];
/// GroupNorm groups (fewer when the channels are not a multiple of it).
const NORM_GROUPS: i64 = 8;
pub const POOL_SIZE: i64 = 7;

#[derive(Debug)]
struct ConvNormRelu {
    conv: QConv2d,
    norm: nn::GroupNorm,
}

impl Module for ConvNormRelu {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.norm.forward(&self.conv.forward(xs)).relu()
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// GroupNorm groups for `channels` channels.
pub fn norm_groups(channels: i64) -> i64 {
    gcd(NORM_GROUPS, channels)
}

/// Builds the small backbone; `width` is `model.small_width`, `head_hidden` is
/// `model.roi.head_hidden`.
pub fn small(
    root: &nn::Path,
    width: i64,
    head_hidden: i64,
    quant: &LayerQuant,
    registry: &QuantRegistry,
) -> Result<BackboneParts> {
    if width < 1 {
        bail!("key `model.small_width`: {width} is not allowed; must be at least 1");
    }
    if head_hidden < 1 {
        bail!("key `model.roi.head_hidden`: {head_hidden} is not allowed; must be at least 1");
    }
    let features = root / "features";
    let mut trunk = nn::seq();
    let mut c_in = 3;
    let mut index = 0;
    for (blocks, multiplier) in BLOCKS_PER_STAGE.into_iter().zip(STAGE_WIDTHS) {
        let c_out = width * multiplier;
        for block in 0..blocks {
            let path = &features / index;
            let spec = if index == 0 {
                quant.first_conv()
            } else {
                quant.layer()
            };
            let stride = if block == 0 { 2 } else { 1 };
            let conv = qconv2d(
                &(&path / "conv"),
                registry,
                spec,
                c_in,
                c_out,
                3,
                kaiming_conv(stride, 1),
            );
            let norm = nn::group_norm(
                &path / "norm",
                norm_groups(c_out),
                c_out,
                Default::default(),
            );
            trunk = trunk.add(ConvNormRelu { conv, norm });
            c_in = c_out;
            index += 1;
        }
    }

    let classifier = root / "classifier";
    let flat = c_in * POOL_SIZE * POOL_SIZE;
    let fc1 = qlinear(
        &(&classifier / 0),
        registry,
        quant.layer(),
        flat,
        head_hidden,
        Default::default(),
    );
    let fc2 = qlinear(
        &(&classifier / 2),
        registry,
        quant.layer(),
        head_hidden,
        head_hidden,
        Default::default(),
    );
    let head = nn::seq()
        .add_fn(|xs| xs.flatten(1, -1))
        .add(fc1)
        .add_fn(|xs| xs.relu())
        .add(fc2)
        .add_fn(|xs| xs.relu());

    Ok(BackboneParts {
        trunk: Box::new(trunk),
        trunk_channels: c_in,
        head: Box::new(head),
        head_dim: head_hidden,
        pool_size: POOL_SIZE,
        frozen_prefixes: Vec::new(),
    })
}
