//! Detector backbones (SPEC §2): each is split into a trunk (image -> stride-16 features)
//! and a RoI head (pooled RoIs -> one feature vector per RoI), built from the
//! quantize-on-forward layers. VGG-16 and ResNet-50 use torchvision's state_dict names, so
//! torchvision weights exported as safetensors load by name (`crate::nn::weights`).
pub mod frozen_bn;
pub mod resnet;
pub mod small;
pub mod vgg;

use crate::config::{Backbone, ModelConfig, TRUNK_STRIDE};
use crate::nn::QuantRegistry;
use crate::quant::QuantSpec;
use anyhow::{bail, Result};
use tch::nn;

/// A backbone split the way the Faster R-CNN uses it.
#[derive(Debug)]
pub struct BackboneParts {
    /// Image `[N, 3, H, W]` -> features `[N, trunk_channels, ceil-or-floor(H/16), ..]`.
    pub trunk: Box<dyn nn::ModuleT>,
    pub trunk_channels: i64,
    /// Pooled RoIs `[K, trunk_channels, pool_size, pool_size]` -> `[K, head_dim]`.
    pub head: Box<dyn nn::ModuleT>,
    pub head_dim: i64,
    /// RoI pooler output size the head expects.
    pub pool_size: i64,
    /// Full VarStore name prefixes (ending in `.`) of the parameters that stay fixed when
    /// pretrained weights are loaded; see `crate::nn::weights::freeze_by_prefix`.
    pub frozen_prefixes: Vec<String>,
}

/// Which quantizer each backbone layer gets: conv and fc weights are quantized when `spec`
/// is set, except the first conv when `float_first_conv`; norms and biases stay float.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerQuant {
    pub spec: Option<QuantSpec>,
    pub float_first_conv: bool,
}

impl LayerQuant {
    /// The spec of the network's first (image-facing) conv.
    pub fn first_conv(&self) -> Option<QuantSpec> {
        if self.float_first_conv {
            None
        } else {
            self.spec
        }
    }

    /// The spec of every other conv / fc layer.
    pub fn layer(&self) -> Option<QuantSpec> {
        self.spec
    }
}

/// Builds the configured backbone under `root` (the caller passes `vs.root() / "backbone"`).
pub fn build_backbone(
    root: &nn::Path,
    cfg: &ModelConfig,
    quant: &LayerQuant,
    registry: &QuantRegistry,
) -> Result<BackboneParts> {
    if cfg.feature_stride != TRUNK_STRIDE {
        bail!(
            "key `model.feature_stride`: {} is not supported; every backbone has stride {TRUNK_STRIDE}",
            cfg.feature_stride
        );
    }
    match cfg.backbone {
        Backbone::Vgg16 => Ok(vgg::vgg16(root, quant, registry)),
        Backbone::Resnet50 => Ok(resnet::resnet50_c4(root, quant, registry)),
        Backbone::Small => {
            small::small(root, cfg.small_width, cfg.roi.head_hidden, quant, registry)
        }
    }
}

/// Runs a conv stack on channels-last (NHWC) input on the CPU and hands back an ordinary
/// contiguous tensor. oneDNN's CPU convolutions skip their layout reorders on NHWC: with
/// libtorch 2.11 on 2 threads, forward + backward of ResNet-50's conv1..layer3 at 600x1000
/// took 1.9 s instead of 2.6 s, its layer4 on 128 RoIs 4.0 s instead of 4.8 s. VGG-16 wraps
/// only conv1..conv3, which gain (see vgg.rs). Values are the same up to float rounding
/// order. The output is made contiguous again because the RPN's single 3x3 conv and RoI
/// pooling were slower on NHWC. CUDA input passes through unchanged (not measured there).
#[derive(Debug)]
pub struct ChannelsLast<M>(pub M);

impl<M: nn::ModuleT> nn::ModuleT for ChannelsLast<M> {
    fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
        if xs.device() != tch::Device::Cpu {
            return self.0.forward_t(xs, train);
        }
        self.0
            .forward_t(&crate::torch_ext::channels_last(xs), train)
            .contiguous()
    }
}

/// The full VarStore name prefix of `path`, with the trailing separator, so that
/// `features.2.` does not also match `features.21.`.
fn name_prefix(path: &nn::Path) -> String {
    path.path("")
}

/// torchvision's ResNet conv initialization (Kaiming normal, fan-out, no bias: a norm
/// layer follows), also used by the small backbone.
fn kaiming_conv(stride: i64, padding: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    }
}
