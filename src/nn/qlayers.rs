//! Quantize-on-forward layers (SPEC §1.5): float master weights are what the optimizer
//! updates; every forward sees Q(W) and the gradient reaches W unchanged (the straight-through
//! estimator, `straight_through`). Biases stay float.
use crate::quant::QuantSpec;
use std::sync::{Arc, Mutex};
use tch::{nn, Tensor};

/// Every conv / fc weight of a model, quantized or not, by its VarStore name, so logs,
/// sweeps and export can list alpha, sparsity and level histograms per layer.
#[derive(Clone, Default)]
pub struct QuantRegistry {
    layers: Arc<Mutex<Vec<RegisteredLayer>>>,
}

#[derive(Debug)]
pub struct RegisteredLayer {
    pub name: String,
    /// Shallow clone of the master weight (shares storage with the VarStore's).
    pub weight: Tensor,
    /// `None`: this layer stays float.
    pub spec: Option<QuantSpec>,
    /// Q(W) computed ahead of the forward by a quantization pass, shared with the layer.
    pub slot: QuantSlot,
}

/// A layer's Q(W) for the current step when a pass over all layers computed it
/// (`nn::flat::FlatParameters::quantize_weights`); empty otherwise, and the layer then
/// quantizes its weight itself.
#[derive(Debug, Clone, Default)]
pub struct QuantSlot(Arc<Mutex<Option<Tensor>>>);

impl QuantSlot {
    pub fn get(&self) -> Option<Tensor> {
        self.lock().as_ref().map(Tensor::shallow_clone)
    }

    pub(crate) fn set(&self, quantized: &Tensor) {
        *self.lock() = Some(quantized.shallow_clone());
    }

    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tensor>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl QuantRegistry {
    /// Registers a layer's weight; the returned slot is where a pass leaves its Q(W).
    pub fn register(&self, name: String, weight: &Tensor, spec: Option<QuantSpec>) -> QuantSlot {
        let mut layers = self.layers.lock().expect("quant registry poisoned");
        let slot = QuantSlot::default();
        layers.push(RegisteredLayer {
            name,
            weight: weight.shallow_clone(),
            spec,
            slot: slot.clone(),
        });
        slot
    }

    /// Runs `f` over the registered layers, in registration order.
    pub fn with_layers<R>(&self, f: impl FnOnce(&[RegisteredLayer]) -> R) -> R {
        f(&self.layers.lock().expect("quant registry poisoned"))
    }

    /// Fills the slot of every quantized layer with its Q(W), one layer after another, for
    /// a stretch in which the weights do not change (an evaluation): the layers' forwards
    /// then reuse it instead of quantizing on every forward. Slots already filled (a
    /// training step's pass) are left as they are. Dropping the returned guard empties the
    /// slots it filled, so a forward after it (training) quantizes the current weights.
    ///
    /// Each Q(W) is `quant::quantize(W, spec)` under no-grad, what an empty slot's forward
    /// computes, so the forwards give the same bits as without it.
    pub fn quantize_frozen(&self) -> FrozenQuantization {
        self.with_layers(|layers| {
            tch::no_grad(|| {
                let mut slots = Vec::new();
                for layer in layers {
                    let Some(spec) = &layer.spec else { continue };
                    if layer.slot.get().is_some() {
                        continue;
                    }
                    layer.slot.set(&crate::quant::quantize(&layer.weight, spec));
                    slots.push(layer.slot.clone());
                }
                FrozenQuantization { slots }
            })
        })
    }

    /// Every layer's current quantization summary, in registration order (quantizes the
    /// master weights once more; a device sync per layer).
    pub fn stats(&self) -> Vec<LayerStats> {
        self.with_layers(|layers| {
            tch::no_grad(|| layers.iter().map(RegisteredLayer::stats).collect())
        })
    }
}

/// The slots [`QuantRegistry::quantize_frozen`] filled; emptied when this is dropped.
#[must_use = "the quantized weights are withdrawn when this is dropped"]
pub struct FrozenQuantization {
    slots: Vec<QuantSlot>,
}

impl FrozenQuantization {
    /// How many layers' Q(W) this holds (0 for a float model).
    pub fn layers(&self) -> usize {
        self.slots.len()
    }
}

impl Drop for FrozenQuantization {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.clear();
        }
    }
}

impl RegisteredLayer {
    fn stats(&self) -> LayerStats {
        let shape = self.weight.size();
        let numel = self.weight.numel() as i64;
        match &self.spec {
            Some(spec) => {
                let q = crate::quant::quantize_codes(&self.weight, spec);
                LayerStats {
                    name: self.name.clone(),
                    shape,
                    numel,
                    bits: spec.bits,
                    alpha: q.alpha(),
                    nonzero_fraction: q.nonzero_fraction(),
                    level_counts: q.level_counts(),
                }
            }
            None => {
                let nonzero = self.weight.count_nonzero(None).int64_value(&[]);
                LayerStats {
                    name: self.name.clone(),
                    shape,
                    numel,
                    bits: crate::quant::FLOAT_BITS,
                    alpha: 1.0,
                    nonzero_fraction: if numel == 0 {
                        0.0
                    } else {
                        nonzero as f64 / numel as f64
                    },
                    level_counts: Vec::new(),
                }
            }
        }
    }
}

/// One layer's quantization summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerStats {
    pub name: String,
    pub shape: Vec<i64>,
    pub numel: i64,
    /// 32 for a float layer.
    pub bits: u32,
    /// The layer's scale (1 for a float layer: its weights are their own levels).
    pub alpha: f64,
    pub nonzero_fraction: f64,
    /// Counts per code magnitude, from 0 up to the largest level (empty for float).
    pub level_counts: Vec<u64>,
}

/// The weight a quantized layer's forward uses: Q(W) forward, identity backward.
///
/// With gradients enabled this is the straight-through estimator as one autograd function
/// (`torch_ext::straight_through`): the forward value is Q(W) bit for bit, as in evaluation
/// and in an exported model (which stores `alpha * q`), and the backward hands the gradient
/// to W unchanged. `W + (Q(W) - W).detach()` computes the same gradient, but its value is
/// not always Q(W) in float (a weight clipped to alpha from above 2 alpha loses the
/// exactness of the subtraction) and it costs two weight-sized temporaries per forward.
pub fn straight_through(weight: &Tensor, spec: Option<&QuantSpec>) -> Tensor {
    forward_weight(weight, spec, &QuantSlot::default())
}

/// [`straight_through`] with Q(W) taken from `slot` when a pass filled it.
fn forward_weight(weight: &Tensor, spec: Option<&QuantSpec>, slot: &QuantSlot) -> Tensor {
    match spec {
        None => weight.shallow_clone(),
        Some(spec) => {
            let quantized = slot
                .get()
                .unwrap_or_else(|| tch::no_grad(|| crate::quant::quantize(weight, spec)));
            if crate::torch_ext::grad_enabled() && weight.requires_grad() {
                crate::torch_ext::straight_through(weight, &quantized)
            } else {
                quantized
            }
        }
    }
}

#[derive(Debug)]
pub struct QConv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
    pub spec: Option<QuantSpec>,
    pub slot: QuantSlot,
}

/// A 2-D convolution whose weight `<path>.weight` is quantized on forward when `spec` is
/// set. `bias: false` for convs followed by a norm layer.
#[allow(clippy::too_many_arguments)]
pub fn qconv2d(
    path: &nn::Path,
    registry: &QuantRegistry,
    spec: Option<QuantSpec>,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    cfg: nn::ConvConfig,
) -> QConv2d {
    let weight = path.var(
        "weight",
        &[c_out, c_in / cfg.groups, kernel, kernel],
        cfg.ws_init,
    );
    let bias = cfg.bias.then(|| path.var("bias", &[c_out], cfg.bs_init));
    let slot = registry.register(path.path("weight"), &weight, spec);
    QConv2d {
        weight,
        bias,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        groups: cfg.groups,
        spec,
        slot,
    }
}

impl nn::Module for QConv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let weight = forward_weight(&self.weight, self.spec.as_ref(), &self.slot);
        xs.conv2d(
            &weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [self.dilation, self.dilation],
            self.groups,
        )
    }
}

#[derive(Debug)]
pub struct QLinear {
    pub weight: Tensor,
    /// Absent when the config asked for none (`LinearConfig::bias == false`).
    pub bias: Option<Tensor>,
    pub spec: Option<QuantSpec>,
    pub slot: QuantSlot,
}

/// A fully-connected layer (`<path>.weight` [out, in], and `<path>.bias` unless
/// `init.bias` is false), quantized on forward when `spec` is set. Initialization as
/// tch's `nn::linear`.
pub fn qlinear(
    path: &nn::Path,
    registry: &QuantRegistry,
    spec: Option<QuantSpec>,
    c_in: i64,
    c_out: i64,
    init: nn::LinearConfig,
) -> QLinear {
    let weight = path.var("weight", &[c_out, c_in], init.ws_init);
    let bound = 1.0 / (c_in as f64).sqrt();
    let bias = init.bias.then(|| {
        path.var(
            "bias",
            &[c_out],
            init.bs_init.unwrap_or(nn::Init::Uniform {
                lo: -bound,
                up: bound,
            }),
        )
    });
    let slot = registry.register(path.path("weight"), &weight, spec);
    QLinear {
        weight,
        bias,
        spec,
        slot,
    }
}

impl nn::Module for QLinear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let weight = forward_weight(&self.weight, self.spec.as_ref(), &self.slot);
        xs.linear(&weight, self.bias.as_ref())
    }
}
