//! `export --onnx --int8`: the quantized convs and fcs on onnxruntime's integer kernels.
//!
//! A b-bit LBW weight (b <= 4) is `alpha * level`, every level `2^(k-n)`: an integer up to
//! `2^(n-1)` times `alpha * 2^(1-n)`, so int8 weights with that scale (per output channel
//! where a frozen BatchNorm is folded in) are exact. Activations are uint8 with static
//! per-tensor scales from [`super::super::calibrate`] (zero point 0 where a ReLU is fused,
//! so the clamp at 0 is the ReLU); biases int32 at `x_scale * w_scale`.
//!
//! What runs on integers: every quantized conv as `QLinearConv` (uint8 in and out, which
//! onnxruntime runs as its NHWC integer conv), every quantized fc and the RPN's 1x1
//! predictors (as a matrix product over the feature map's cells) as `DequantizeLinear`s
//! into a `Gemm`, which onnxruntime fuses into `QGemm` (float output for the predictors,
//! uint8 after a ReLU); MaxPool on uint8. A residual block's sum and the small backbone's
//! GroupNorm are float between a `DequantizeLinear` and a `QuantizeLinear`; RoI pooling,
//! the proposals, box decoding and NMS stay float, as do layers kept float by the config.
use super::super::calibrate::{input_point, output_point, sum_point, Range, Ranges};
use super::graph::Attr;
use super::Writer;
use crate::deploy::format::ModelFile;
use crate::detect::architecture::{Layer, Weighted};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// A graph value: float32, or uint8 with its scale and zero point.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Float(String),
    Quant(Quantized),
}

#[derive(Debug, Clone)]
pub(super) struct Quantized {
    pub name: String,
    pub scale: f32,
    pub zero_point: u8,
}

/// The int8 export's state: the calibrated ranges and the values already converted.
#[derive(Default)]
pub(super) struct Int8State {
    pub ranges: Ranges,
    /// Float value -> its uint8 version (one `QuantizeLinear` for all consumers).
    quantized: HashMap<String, Quantized>,
    /// uint8 value -> its float version.
    dequantized: HashMap<String, String>,
}

impl Int8State {
    pub fn new(ranges: Ranges) -> Self {
        Int8State {
            ranges,
            ..Default::default()
        }
    }
}

/// Refuses a float model, and a model with a quantized layer whose levels do not fit int8
/// (LBW above 4 bits), naming the layer.
pub fn check_int8(file: &ModelFile) -> Result<()> {
    let quantizer = match &file.meta.quantizer {
        Some(quantizer) if !file.meta.layers.is_empty() => quantizer,
        _ => bail!(
            "--int8: the model has no quantized layer (a float model): its weights are not low-bit integers to keep exact; export it without --int8"
        ),
    };
    for layer in &file.meta.layers {
        let levels = quantizer.levels(layer.bits)?;
        if int8_unit(&levels).is_none() {
            bail!("{}", int8_refusal(&layer.name, layer.bits));
        }
    }
    Ok(())
}

pub(super) fn int8_refusal(layer: &str, bits: u32) -> String {
    format!(
        "--int8: layer {layer} has {bits}-bit levels that are not integers of at most 127 times the smallest one, so they do not fit int8 (LBW fits at 2 to 4 bits); export it without --int8"
    )
}

/// The largest int8 magnitude an exact weight may take.
const INT8_MAX: f64 = 127.0;

/// uint8 parameters for values in `range`: zero point 0 when none is negative.
fn uint8_params(range: Range) -> (f32, u8) {
    let (low, high) = (range.min.min(0.0), range.max.max(0.0));
    let span = high - low;
    // A constant zero tensor (a dead channel set) still needs a positive scale.
    let scale = if span > 0.0 && span.is_finite() {
        span / 255.0
    } else {
        1.0
    };
    let zero_point = (-low / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

impl Writer<'_> {
    fn int8(&mut self) -> &mut Int8State {
        self.int8
            .as_mut()
            .expect("the int8 walker runs only for int8 exports")
    }

    fn range(&mut self, point: &str) -> Result<Range> {
        self.int8().ranges.get(point).copied().with_context(|| {
            format!("no calibrated range for {point} (no calibration image reached it)")
        })
    }

    /// `layers` on `x`: in float unless this is an int8 export.
    pub(super) fn sequence(&mut self, layers: &[Layer], x: Value) -> Result<Value> {
        if self.int8.is_none() {
            let mut x = self.float_of(&x);
            for layer in layers {
                x = self.layer(layer, &x)?;
            }
            return Ok(Value::Float(x));
        }
        let mut x = x;
        let mut i = 0;
        while i < layers.len() {
            x = match &layers[i] {
                Layer::Conv {
                    weight,
                    stride,
                    padding,
                } if weight.quantized => {
                    let norm = match layers.get(i + 1) {
                        Some(Layer::FrozenBatchNorm { name, .. }) => {
                            i += 1;
                            Some(name.as_str())
                        }
                        _ => None,
                    };
                    let relu = matches!(layers.get(i + 1), Some(Layer::Relu));
                    if relu {
                        i += 1;
                    }
                    let input = self.quantize(&x, &input_point(weight))?;
                    Value::Quant(self.qlinear_conv(&input, weight, *stride, *padding, norm, relu)?)
                }
                Layer::Linear(weight) if weight.quantized => {
                    let relu = matches!(layers.get(i + 1), Some(Layer::Relu));
                    if relu {
                        i += 1;
                    }
                    self.qgemm(&x, weight, &weight.shape, relu)?
                }
                Layer::MaxPool { .. } | Layer::Flatten if matches!(x, Value::Quant(_)) => {
                    // Both commute with a monotone uint8 code: same scale and zero point.
                    let Value::Quant(q) = &x else { unreachable!() };
                    let name = self.layer(&layers[i], &q.name)?;
                    Value::Quant(Quantized { name, ..q.clone() })
                }
                Layer::Relu if matches!(&x, Value::Quant(q) if q.zero_point == 0) => x,
                Layer::Residual { body, shortcut } => {
                    let y = self.sequence(body, x.clone())?;
                    let s = if shortcut.is_empty() {
                        x
                    } else {
                        self.sequence(shortcut, x)?
                    };
                    let (y, s) = (self.float_of(&y), self.float_of(&s));
                    let sum = self.g.node("Add", &[&y, &s], &[]);
                    let sum = self.g.node("Relu", &[&sum], &[]);
                    let range = self.range(&sum_point(body))?;
                    Value::Quant(self.quantize_with(&sum, range))
                }
                other => {
                    let x = self.float_of(&x);
                    Value::Float(self.layer(other, &x)?)
                }
            };
            i += 1;
        }
        Ok(x)
    }

    /// A predictor's float output (the RPN's 1x1 convs, the box predictor's fcs): on the
    /// integer kernels when it is quantized in an int8 export.
    pub(super) fn predictor(&mut self, layer: &Layer, x: &Value) -> Result<String> {
        match layer {
            Layer::Linear(weight) if weight.quantized && self.int8.is_some() => {
                match self.qgemm(x, weight, &weight.shape, false)? {
                    Value::Float(y) => Ok(y),
                    Value::Quant(_) => bail!("a predictor's output is float"),
                }
            }
            Layer::Conv {
                weight,
                stride: 1,
                padding: 0,
            } if weight.quantized && weight.shape[2] == 1 && self.int8.is_some() => {
                self.conv1x1_as_gemm(x, weight)
            }
            _ => {
                let x = self.float_of(x);
                self.layer(layer, &x)
            }
        }
    }

    /// The float value of `v` (one `DequantizeLinear` for all its consumers).
    pub(super) fn float_of(&mut self, v: &Value) -> String {
        match v {
            Value::Float(name) => name.clone(),
            Value::Quant(q) => {
                if let Some(name) = self.int8().dequantized.get(&q.name) {
                    return name.clone();
                }
                let name = self.dequantize(q);
                self.int8().dequantized.insert(q.name.clone(), name.clone());
                name
            }
        }
    }

    /// Records `float` as the float value of `q` (after a rename).
    pub(super) fn set_float_of(&mut self, q: &Quantized, float: String) {
        self.int8().dequantized.insert(q.name.clone(), float);
    }

    fn dequantize(&mut self, q: &Quantized) -> String {
        let scale = self.g.f32s(&[], &[q.scale]);
        let zero_point = self.g.u8s(&[], &[q.zero_point]);
        self.g
            .node("DequantizeLinear", &[&q.name, &scale, &zero_point], &[])
    }

    /// `v` as uint8: as it is, or quantized over the calibrated range of `point`.
    fn quantize(&mut self, v: &Value, point: &str) -> Result<Quantized> {
        match v {
            Value::Quant(q) => Ok(q.clone()),
            Value::Float(name) => {
                if let Some(q) = self.int8().quantized.get(name) {
                    return Ok(q.clone());
                }
                let range = self.range(point)?;
                Ok(self.quantize_with(name, range))
            }
        }
    }

    fn quantize_with(&mut self, name: &str, range: Range) -> Quantized {
        let (scale, zero_point) = uint8_params(range);
        let (s, z) = (self.g.f32s(&[], &[scale]), self.g.u8s(&[], &[zero_point]));
        let q = Quantized {
            name: self.g.node("QuantizeLinear", &[name, &s, &z], &[]),
            scale,
            zero_point,
        };
        self.int8().quantized.insert(name.into(), q.clone());
        q
    }

    /// `QLinearConv` with the frozen BatchNorm `norm` folded in (per-channel weight
    /// scales, its shift in the bias), the output uint8 over the calibrated range (from 0
    /// when `relu`: the clamp is the ReLU).
    fn qlinear_conv(
        &mut self,
        x: &Quantized,
        weight: &Weighted,
        stride: i64,
        padding: i64,
        norm: Option<&str>,
        relu: bool,
    ) -> Result<Quantized> {
        let channels = weight.shape[0] as usize;
        let (w, unit) = self.int8_weight(&format!("{}.weight", weight.name), &weight.shape)?;
        let mut scales = vec![unit; channels];
        let mut shifts = match weight.bias {
            true => self.f32_values(&format!("{}.bias", weight.name), channels)?,
            false => vec![0.0; channels],
        };
        if let Some(norm) = norm {
            let [gamma, beta, mean, var] = ["weight", "bias", "running_mean", "running_var"]
                .map(|p| self.f32_values(&format!("{norm}.{p}"), channels));
            let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
            for c in 0..channels {
                let factor = gamma[c] / (var[c] + crate::nn::backbones::frozen_bn::EPS).sqrt();
                scales[c] *= factor;
                shifts[c] = shifts[c] * factor + beta[c] - mean[c] * factor;
            }
        }
        let output = self.range(&output_point(weight))?;
        let output = if relu {
            Range {
                min: 0.0,
                max: output.max.max(0.0),
            }
        } else {
            output
        };
        let (y_scale, y_zero_point) = uint8_params(output);
        let (scales, bias) = int_bias(&weight.name, x.scale, &scales, &shifts)?;
        let g = &mut self.g;
        let per_channel = norm.is_some();
        let (w_scale, w_zero_point) = if per_channel {
            (
                g.f32s(&[channels as i64], &scales),
                g.i8s(&[channels as i64], &vec![0; channels]),
            )
        } else {
            (g.f32s(&[], &scales[..1]), g.i8s(&[], &[0]))
        };
        let (x_scale, x_zero_point) = (g.f32s(&[], &[x.scale]), g.u8s(&[], &[x.zero_point]));
        let (ys, yz) = (g.f32s(&[], &[y_scale]), g.u8s(&[], &[y_zero_point]));
        let bias = g.i32s(&[channels as i64], &bias);
        let k = weight.shape[2];
        let name = g.node(
            "QLinearConv",
            &[
                &x.name,
                &x_scale,
                &x_zero_point,
                &w,
                &w_scale,
                &w_zero_point,
                &ys,
                &yz,
                &bias,
            ],
            &[
                ("kernel_shape", Attr::Ints(&[k, k])),
                ("strides", Attr::Ints(&[stride, stride])),
                ("pads", Attr::Ints(&[padding; 4])),
            ],
        );
        Ok(Quantized {
            name,
            scale: y_scale,
            zero_point: y_zero_point,
        })
    }

    /// `x [N, in] -> [N, out]` as `DequantizeLinear`s into a `Gemm` (its own
    /// `DequantizeLinear` of `x`, as onnxruntime fuses only a pattern whose nodes have one
    /// consumer): uint8 over the calibrated output range after a ReLU (`relu`), else float.
    fn qgemm(&mut self, x: &Value, weight: &Weighted, shape: &[i64], relu: bool) -> Result<Value> {
        let x = self.quantize(x, &input_point(weight))?;
        let out = shape[0] as usize;
        let (w, unit) = self.int8_weight(&format!("{}.weight", weight.name), shape)?;
        let shifts = self.f32_values(&format!("{}.bias", weight.name), out)?;
        let (scales, bias) = int_bias(&weight.name, x.scale, &vec![unit; out], &shifts)?;
        let output = if relu {
            Some(self.range(&output_point(weight))?)
        } else {
            None
        };
        let g = &mut self.g;
        let dx = {
            let (s, z) = (g.f32s(&[], &[x.scale]), g.u8s(&[], &[x.zero_point]));
            g.node("DequantizeLinear", &[&x.name, &s, &z], &[])
        };
        let dw = {
            let (s, z) = (g.f32s(&[], &scales[..1]), g.i8s(&[], &[0]));
            g.node("DequantizeLinear", &[&w, &s, &z], &[])
        };
        let db = {
            let b = g.i32s(&[out as i64], &bias);
            let s = g.f32s(&[], &[x.scale * scales[0]]);
            g.node("DequantizeLinear", &[&b, &s], &[])
        };
        let y = g.node("Gemm", &[&dx, &dw, &db], &[("transB", Attr::Int(1))]);
        Ok(match output {
            None => Value::Float(y),
            Some(range) => {
                let y = g.node("Relu", &[&y], &[]);
                let range = Range {
                    min: 0.0,
                    max: range.max.max(0.0),
                };
                let (scale, zero_point) = uint8_params(range);
                let (s, z) = (g.f32s(&[], &[scale]), g.u8s(&[], &[zero_point]));
                Value::Quant(Quantized {
                    name: g.node("QuantizeLinear", &[&y, &s, &z], &[]),
                    scale,
                    zero_point,
                })
            }
        })
    }

    /// A 1x1 conv `[1, C, H, W] -> [1, O, H, W]` as a matrix product over the `H*W` cells,
    /// so that its float output comes from the integer kernel (`QGemm`).
    fn conv1x1_as_gemm(&mut self, x: &Value, weight: &Weighted) -> Result<String> {
        let x = self.quantize(x, &input_point(weight))?;
        let (out, channels) = (weight.shape[0], weight.shape[1]);
        let g = &mut self.g;
        let cells = g.node(
            "Transpose",
            &[&x.name],
            &[("perm", Attr::Ints(&[0, 2, 3, 1]))],
        );
        let nhw_shape = g.node("Shape", &[&cells], &[]);
        let rows = g.vec_i64(&[-1, channels]);
        let cells = g.node("Reshape", &[&cells, &rows], &[]);
        let cells = Value::Quant(Quantized { name: cells, ..x });
        let y = match self.qgemm(&cells, weight, &[out, channels], false)? {
            Value::Float(y) => y,
            Value::Quant(_) => bail!("a predictor's output is float"),
        };
        let g = &mut self.g;
        let (zero, three) = (g.vec_i64(&[0]), g.vec_i64(&[3]));
        let nhw = g.node("Slice", &[&nhw_shape, &zero, &three], &[]);
        let o = g.vec_i64(&[out]);
        let nhwo = g.node("Concat", &[&nhw, &o], &[("axis", Attr::Int(0))]);
        let y = g.node("Reshape", &[&y, &nhwo], &[]);
        Ok(g.node("Transpose", &[&y], &[("perm", Attr::Ints(&[0, 3, 1, 2]))]))
    }

    /// A float tensor of the file with `count` values, in float64.
    fn f32_values(&self, name: &str, count: usize) -> Result<Vec<f64>> {
        let values = self.file_f32(name, &[count as i64])?;
        Ok(values.into_iter().map(f64::from).collect())
    }
}

/// The weight scales as float32 (a zero scale, an all-zero channel, becomes 1: its
/// weights are 0 either way) and the biases as int32 at `x_scale * w_scale`.
fn int_bias(
    layer: &str,
    x_scale: f32,
    scales: &[f64],
    shifts: &[f64],
) -> Result<(Vec<f32>, Vec<i32>)> {
    let scales: Vec<f32> = scales
        .iter()
        .map(|&s| {
            if s == 0.0 || !s.is_finite() {
                1.0
            } else {
                s as f32
            }
        })
        .collect();
    let bias = scales
        .iter()
        .zip(shifts)
        .map(|(&s, &b)| {
            // The product the kernel's requantization uses, in float32.
            let q = (b / f64::from(x_scale * s)).round();
            ensure!(
                q.abs() <= f64::from(i32::MAX),
                "layer {layer}: bias {b} at scale {} overflows int32",
                x_scale * s
            );
            Ok(q as i32)
        })
        .collect::<Result<_>>()?;
    Ok((scales, bias))
}

/// The smallest nonzero level of `levels` when every level is an integer multiple of it
/// of at most 127 (LBW's powers of two up to 4 bits, the uniform sets, ternary): the
/// int8 weights' unit. None when they do not fit int8.
pub(super) fn int8_unit(levels: &crate::quant::LevelSet) -> Option<f64> {
    let unit = levels.magnitude(1);
    let fits = (1..=levels.max_code()).all(|k| {
        let multiple = levels.magnitude(k) / unit;
        multiple.fract() == 0.0 && multiple <= INT8_MAX
    });
    (unit > 0.0 && fits).then_some(unit)
}
