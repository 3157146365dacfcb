//! The per-layer operators: convolutions, fc layers, norms, pooling, residual blocks.
use super::graph::Attr;
use super::Writer;
use crate::detect::architecture::Layer;
use anyhow::{Context, Result};

impl Writer<'_> {
    pub(super) fn layer(&mut self, layer: &Layer, x: &str) -> Result<String> {
        Ok(match layer {
            Layer::Conv {
                weight,
                stride,
                padding,
            } => {
                let (w, b) = self.weights(weight)?;
                let mut inputs = vec![x, w.as_str()];
                if let Some(b) = &b {
                    inputs.push(b);
                }
                let k = weight.shape[2];
                self.g.node(
                    "Conv",
                    &inputs,
                    &[
                        ("kernel_shape", Attr::Ints(&[k, k])),
                        ("strides", Attr::Ints(&[*stride, *stride])),
                        ("pads", Attr::Ints(&[*padding; 4])),
                    ],
                )
            }
            Layer::Linear(weight) => {
                let (w, b) = self.weights(weight)?;
                let b = b.context("an fc layer without bias")?;
                self.g
                    .node("Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))])
            }
            Layer::GroupNorm {
                name,
                groups,
                channels,
            } => {
                // InstanceNormalization over [N, groups, -1], then the per-channel affine.
                let g = &mut self.g;
                let shape = g.node("Shape", &[x], &[]);
                let grouped_shape = g.vec_i64(&[0, *groups, -1]);
                let grouped = g.node("Reshape", &[x, &grouped_shape], &[]);
                let ones = g.f32s(&[*groups], &vec![1.0; *groups as usize]);
                let zeros = g.f32s(&[*groups], &vec![0.0; *groups as usize]);
                let normed = g.node(
                    "InstanceNormalization",
                    &[&grouped, &ones, &zeros],
                    &[("epsilon", Attr::Float(1e-5))],
                );
                let normed = g.node("Reshape", &[&normed, &shape], &[]);
                let weight = self.float_param(&format!("{name}.weight"), &[*channels, 1, 1])?;
                let bias = self.float_param(&format!("{name}.bias"), &[*channels, 1, 1])?;
                let scaled = self.g.node("Mul", &[&normed, &weight], &[]);
                self.g.node("Add", &[&scaled, &bias], &[])
            }
            Layer::FrozenBatchNorm { name, channels } => {
                let p: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|p| self.float_param(&format!("{name}.{p}"), &[*channels]))
                    .collect::<Result<_>>()?;
                self.g.node(
                    "BatchNormalization",
                    &[x, &p[0], &p[1], &p[2], &p[3]],
                    &[(
                        "epsilon",
                        Attr::Float(crate::nn::backbones::frozen_bn::EPS as f32),
                    )],
                )
            }
            Layer::Relu => self.g.node("Relu", &[x], &[]),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => self.g.node(
                "MaxPool",
                &[x],
                &[
                    ("kernel_shape", Attr::Ints(&[*kernel, *kernel])),
                    ("strides", Attr::Ints(&[*stride, *stride])),
                    ("pads", Attr::Ints(&[*padding; 4])),
                ],
            ),
            Layer::Flatten => self.g.node("Flatten", &[x], &[("axis", Attr::Int(1))]),
            Layer::SpatialMean => {
                let pooled = self.g.node("GlobalAveragePool", &[x], &[]);
                self.g
                    .node("Flatten", &[&pooled], &[("axis", Attr::Int(1))])
            }
            Layer::Residual { body, shortcut } => {
                let mut y = x.to_string();
                for l in body {
                    y = self.layer(l, &y)?;
                }
                let mut s = x.to_string();
                for l in shortcut {
                    s = self.layer(l, &s)?;
                }
                let sum = self.g.node("Add", &[&y, &s], &[]);
                self.g.node("Relu", &[&sum], &[])
            }
        })
    }
}
