//! Flat parameters: every trainable variable becomes a view into one of two flat buffers
//! (weights with weight decay, and biases and norm parameters without), its gradient a view
//! into a matching gradient buffer, and the quantized layers of each [`QuantSpec`] lie back
//! to back, each at a multiple of the flat pass's chunk (`quant::flat::chunked`). One quantization pass ([`FlatParameters::quantize_weights`]) and one optimizer
//! step then cover the whole model in a number of tensor operations that does not grow
//! with the number of layers, as FSDP's flat parameters and apex's multi-tensor apply do:
//! on a GPU, per-layer passes are bound by kernel launches, not by memory.
//!
//! The variables stay the model's own (the VarStore, the layers and the registry share
//! them): only their storage moves into the buffers, so loading a checkpoint, saving one
//! and evaluating work as before.
use crate::nn::qlayers::{QuantRegistry, QuantSlot};
use crate::quant::flat::{aligned, chunked};
use crate::quant::{FlatSegments, QuantSpec};
use anyhow::{bail, Result};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use tch::{Device, Kind, Tensor};

/// One flat buffer of parameters and its gradient buffer.
pub struct FlatGroup {
    /// The parameters' values, back to back (1-D float32).
    pub values: Tensor,
    /// Their gradients, at the same offsets; autograd accumulates into it in place.
    pub grads: Tensor,
    /// Whether weight decay applies (conv and fc weights, not biases and norm parameters).
    pub decay: bool,
    pub members: Vec<FlatMember>,
}

/// Where one variable lies in its group's buffers.
#[derive(Debug, Clone)]
pub struct FlatMember {
    pub name: String,
    pub offset: i64,
    pub shape: Vec<i64>,
}

impl FlatMember {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// This member's part of a buffer laid out like its group's, in the member's shape.
    pub fn view_of(&self, buffer: &Tensor) -> Tensor {
        buffer
            .narrow(0, self.offset, self.numel())
            .view(self.shape.as_slice())
    }
}

/// The trainable quantized layers of one spec: where they lie in the decay group, and the
/// buffer their quantized weights are written to each pass.
struct QuantRun {
    segments: FlatSegments,
    /// The layers' master weights: a view of the decay group's values.
    values: Tensor,
    /// Q(W) of the same layers, overwritten by every pass.
    output: Tensor,
    /// Each layer's slot and its view of `output`.
    layers: Vec<(QuantSlot, Tensor)>,
}

/// A quantized layer outside the flat buffers (frozen: its weight never changes), whose
/// Q(W) is computed once, at the first pass.
struct FixedLayer {
    slot: QuantSlot,
    weight: Tensor,
    spec: QuantSpec,
}

/// A model's trainable variables in flat buffers, and the quantization pass over them.
pub struct FlatParameters {
    groups: Vec<FlatGroup>,
    runs: Vec<QuantRun>,
    fixed: Vec<FixedLayer>,
    fixed_quantized: OnceCell<Vec<Tensor>>,
}

/// Q(W) of every quantized layer for one step: the layers' forwards use it while this
/// lives; dropping it (before the optimizer changes W) returns them to quantizing on
/// their own.
#[must_use = "the quantized weights are withdrawn when this is dropped"]
pub struct QuantizedWeights {
    slots: Vec<QuantSlot>,
}

impl Drop for QuantizedWeights {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.clear();
        }
    }
}

impl FlatParameters {
    /// Moves the trainable ones among `variables` (name → variable, e.g.
    /// `VarStore::variables()`) into flat buffers, with the quantized layers of `registry`
    /// grouped by spec. All must be float32 on one device.
    pub fn new(variables: HashMap<String, Tensor>, registry: &QuantRegistry) -> Result<Self> {
        let trainable: BTreeMap<String, Tensor> = variables
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let device = check_uniform(&trainable)?;
        let (runs, fixed) = group_quantized_layers(registry, &trainable);
        let (decay_names, plain_names) = buffer_order(&runs, &trainable);
        let quantized: HashSet<&str> = runs
            .iter()
            .flat_map(|(_, members)| members.iter().map(|(name, _)| name.as_str()))
            .collect();
        let decay = flatten(&decay_names, &trainable, true, &quantized, device);
        let plain = flatten(&plain_names, &trainable, false, &quantized, device);
        let quant_runs = runs
            .into_iter()
            .map(|(spec, members)| quant_run(spec, members, &decay, device))
            .collect::<Result<_>>()?;
        Ok(FlatParameters {
            groups: vec![decay, plain],
            runs: quant_runs,
            fixed,
            fixed_quantized: OnceCell::new(),
        })
    }

    /// The flat buffers: weights with decay first, then the rest.
    pub fn groups(&self) -> &[FlatGroup] {
        &self.groups
    }

    /// Quantizes every quantized layer's weight for the coming forward: one flat pass per
    /// spec over the trainable layers (frozen layers once, at the first call). The layers
    /// use the result until the returned guard is dropped; drop it before the weights change.
    pub fn quantize_weights(&self) -> QuantizedWeights {
        tch::no_grad(|| {
            for run in &self.runs {
                run.segments
                    .quantize_into(&run.values, &mut run.output.shallow_clone());
            }
        });
        let fixed = self.fixed_quantized.get_or_init(|| {
            tch::no_grad(|| {
                self.fixed
                    .iter()
                    .map(|layer| crate::quant::quantize(&layer.weight, &layer.spec))
                    .collect()
            })
        });
        let mut slots = Vec::new();
        for run in &self.runs {
            for (slot, view) in &run.layers {
                slot.set(view);
                slots.push(slot.clone());
            }
        }
        for (layer, quantized) in self.fixed.iter().zip(fixed) {
            layer.slot.set(quantized);
            slots.push(layer.slot.clone());
        }
        QuantizedWeights { slots }
    }
}

/// One spec and its trainable layers (name and slot), in registration order.
type SpecLayers = (QuantSpec, Vec<(String, QuantSlot)>);

/// The trainable quantized layers grouped by spec (specs and layers in registration
/// order), and the quantized layers that are not trainable.
fn group_quantized_layers(
    registry: &QuantRegistry,
    trainable: &BTreeMap<String, Tensor>,
) -> (Vec<SpecLayers>, Vec<FixedLayer>) {
    let mut runs: Vec<SpecLayers> = Vec::new();
    let mut fixed = Vec::new();
    registry.with_layers(|layers| {
        for layer in layers {
            let Some(spec) = layer.spec else { continue };
            if !trainable.contains_key(&layer.name) {
                fixed.push(FixedLayer {
                    slot: layer.slot.clone(),
                    weight: layer.weight.shallow_clone(),
                    spec,
                });
                continue;
            }
            let member = (layer.name.clone(), layer.slot.clone());
            match runs.iter_mut().find(|(s, _)| *s == spec) {
                Some((_, members)) => members.push(member),
                None => runs.push((spec, vec![member])),
            }
        }
    });
    (runs, fixed)
}

/// The names in each buffer, in order: the decay buffer holds the quantized layers run by
/// run, then the other weights (more than one dimension) by name; the other buffer holds
/// biases and norm parameters by name.
fn buffer_order(
    runs: &[SpecLayers],
    trainable: &BTreeMap<String, Tensor>,
) -> (Vec<String>, Vec<String>) {
    let mut decay: Vec<String> = runs
        .iter()
        .flat_map(|(_, members)| members.iter().map(|(name, _)| name.clone()))
        .collect();
    let quantized: HashSet<String> = decay.iter().cloned().collect();
    let mut plain = Vec::new();
    for (name, t) in trainable {
        if quantized.contains(name) {
            continue;
        }
        if t.dim() > 1 {
            decay.push(name.clone());
        } else {
            plain.push(name.clone());
        }
    }
    (decay, plain)
}

/// One spec's run: its layers lie back to back in `decay`, starting with the first one;
/// each layer's slot gets its view of the run's output buffer.
fn quant_run(
    spec: QuantSpec,
    members: Vec<(String, QuantSlot)>,
    decay: &FlatGroup,
    device: Device,
) -> Result<QuantRun> {
    let member_of: HashMap<&str, &FlatMember> =
        decay.members.iter().map(|m| (m.name.as_str(), m)).collect();
    let first = member_of[members[0].0.as_str()].offset;
    let numels = members
        .iter()
        .map(|(name, _)| member_of[name.as_str()].numel())
        .collect();
    let segments = FlatSegments::new(spec, numels, device)?;
    let offsets: Vec<i64> = members
        .iter()
        .map(|(name, _)| member_of[name.as_str()].offset - first)
        .collect();
    assert_eq!(
        offsets,
        segments.offsets(),
        "the run's layout is the flat pass's"
    );
    let values = decay.values.narrow(0, first, segments.total());
    let output = Tensor::zeros([segments.total()], (Kind::Float, device));
    let layers = members
        .into_iter()
        .map(|(name, slot)| {
            let local = FlatMember {
                offset: member_of[name.as_str()].offset - first,
                ..member_of[name.as_str()].clone()
            };
            (slot, local.view_of(&output))
        })
        .collect();
    Ok(QuantRun {
        segments,
        values,
        output,
        layers,
    })
}

/// The device every variable is on; an error for other dtypes or mixed devices.
fn check_uniform(variables: &BTreeMap<String, Tensor>) -> Result<Device> {
    let mut device = None;
    for (name, t) in variables {
        if t.kind() != Kind::Float {
            bail!("variable {name} is {:?}; training needs float32", t.kind());
        }
        match device {
            None => device = Some(t.device()),
            Some(d) if d != t.device() => {
                bail!("variable {name} is on {:?}, others on {d:?}", t.device())
            }
            Some(_) => {}
        }
    }
    Ok(device.unwrap_or(Device::Cpu))
}

/// Copies the variables `names` into one flat buffer (each at an [`aligned`] offset, the
/// `quantized` ones taking [`chunked`] extents as the flat pass lays them out; zeros
/// between) and makes each a view of it, with a gradient that is a view of a zeroed buffer
/// of the same layout.
fn flatten(
    names: &[String],
    variables: &BTreeMap<String, Tensor>,
    decay: bool,
    quantized: &HashSet<&str>,
    device: Device,
) -> FlatGroup {
    let mut members = Vec::with_capacity(names.len());
    let mut offset = 0;
    for name in names {
        let shape = variables[name].size();
        let member = FlatMember {
            name: name.clone(),
            offset,
            shape,
        };
        // Every variable at an aligned offset, as its own allocation would be.
        offset += if quantized.contains(name.as_str()) {
            chunked(member.numel())
        } else {
            aligned(member.numel())
        };
        members.push(member);
    }
    let values = Tensor::zeros([offset], (Kind::Float, device));
    let grads = Tensor::zeros([offset], (Kind::Float, device));
    tch::no_grad(|| {
        for member in &members {
            let mut variable = variables[&member.name].shallow_clone();
            let mut view = member.view_of(&values);
            view.copy_(&variable);
            variable.set_data(&view);
            crate::torch_ext::set_grad(&variable, &member.view_of(&grads));
        }
    });
    FlatGroup {
        values,
        grads,
        decay,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{qconv2d, qlinear};
    use crate::quant::Method;
    use tch::nn::{Module, VarStore};

    fn model(layers: usize, spec: QuantSpec) -> (VarStore, QuantRegistry, Vec<crate::nn::QConv2d>) {
        let vs = VarStore::new(Device::Cpu);
        let registry = QuantRegistry::default();
        let root = vs.root();
        let convs = (0..layers)
            .map(|i| {
                let channels = 2 + (i as i64 % 5);
                qconv2d(
                    &(&root / format!("conv{i}")),
                    &registry,
                    Some(spec),
                    channels,
                    channels,
                    3,
                    Default::default(),
                )
            })
            .collect();
        // A float layer and one of another spec in the same model.
        let _ = qlinear(&(&root / "fc"), &registry, None, 4, 3, Default::default());
        let other = QuantSpec::new(Method::Pow2, 3, None).unwrap();
        let _ = qlinear(
            &(&root / "fc2"),
            &registry,
            Some(other),
            4,
            3,
            Default::default(),
        );
        (vs, registry, convs)
    }

    /// The pass gives every layer exactly `quantize(W)`, the variables stay usable (views
    /// of the buffers, gradients into the gradient buffer), and dropping the guard returns
    /// the layers to quantizing on their own.
    #[test]
    fn flat_pass_equals_per_layer_quantization() {
        tch::manual_seed(1);
        let spec = QuantSpec::new(Method::Lbw, 4, None).unwrap();
        let (vs, registry, convs) = model(7, spec);
        let flat = FlatParameters::new(vs.variables(), &registry).unwrap();
        assert_eq!(flat.runs.len(), 2);
        let quantized = flat.quantize_weights();
        registry.with_layers(|layers| {
            for layer in layers {
                let Some(spec) = layer.spec else {
                    assert!(layer.slot.get().is_none());
                    continue;
                };
                let expected = crate::quant::quantize(&layer.weight, &spec);
                assert!(layer.slot.get().unwrap().equal(&expected), "{}", layer.name);
            }
        });
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Float, Device::Cpu));
        let y = convs[0].forward(&x);
        drop(quantized);
        assert!(registry.with_layers(|l| l.iter().all(|l| l.slot.get().is_none())));
        assert!(y.equal(&convs[0].forward(&x)));
        y.sum(Kind::Float).backward();
        let grads = &flat.groups()[0].grads;
        assert!(grads.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(convs[0]
            .weight
            .grad()
            .equal(&flat.groups()[0].members[0].view_of(grads)));
    }

    /// The number of top-level operations of a pass on the device-generic path (the one a
    /// GPU runs) is the same for 3 layers and for 300: nothing is launched per layer.
    #[test]
    fn pass_operation_count_does_not_grow_with_layers() {
        for method in [Method::Lbw, Method::Pow2] {
            let spec = QuantSpec::new(method, 6, None).unwrap();
            let counts: Vec<i64> = [3, 300]
                .into_iter()
                .map(|layers| {
                    let (vs, registry, _) = model(layers, spec);
                    let flat = FlatParameters::new(vs.variables(), &registry).unwrap();
                    let (_, ops) = crate::quant::with_tensor_ops(|| {
                        crate::torch_ext::count_ops(|| drop(flat.quantize_weights()))
                    });
                    ops
                })
                .collect();
            println!("{method}: top-level operations per pass, 3 and 300 layers: {counts:?}");
            assert!(counts[0] > 0, "{method}: nothing was counted");
            assert_eq!(counts[0], counts[1], "{method}: 3 layers vs 300 layers");
        }
    }
}
