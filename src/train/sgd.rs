//! SGD with momentum and weight decay (PyTorch's update rule), written here rather than
//! taken from tch so its momentum buffers can be checkpointed and restored on resume. It
//! steps the flat buffers of [`FlatParameters`] (one for weights with decay, one for the
//! rest): a few element-wise operations per step, however many layers the model has, and
//! the same values as stepping each tensor on its own.
use crate::nn::flat::{FlatMember, FlatParameters};
use std::collections::HashMap;
use tch::Tensor;

/// One flat buffer's optimizer state.
struct Group {
    values: Tensor,
    grads: Tensor,
    decay: bool,
    members: Vec<FlatMember>,
    momentum: Tensor,
    /// Holds `w * wd` and `lr * buf` during a step: a fresh buffer the size of all weights
    /// each step would be a new mapping to fault in (VGG-16: 550 MB, ~300 ms a step).
    scratch: Tensor,
    /// False until the first step, which sets the momentum to the first direction (as
    /// PyTorch does) instead of decaying a zero buffer into it.
    started: bool,
}

pub struct Sgd {
    groups: Vec<Group>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// Optimizes the trainable variables flattened into `params`.
    pub fn new(params: &FlatParameters, momentum: f64, weight_decay: f64) -> Self {
        let groups = params
            .groups()
            .iter()
            .map(|g| Group {
                values: g.values.shallow_clone(),
                grads: g.grads.shallow_clone(),
                decay: g.decay,
                members: g.members.clone(),
                momentum: g.values.zeros_like(),
                scratch: g.values.empty_like(),
                started: false,
            })
            .collect();
        Self {
            groups,
            momentum,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            let _ = g.grads.zero_();
        }
    }

    /// Scales the gradients so their global L2 norm (the norm of the per-tensor norms) is
    /// at most `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norms: Vec<Tensor> = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| m.view_of(&g.grads).norm()))
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        let norm = tch::no_grad(|| Tensor::stack(&norms, 0).norm()).double_value(&[]);
        if max_norm > 0.0 && norm > max_norm {
            let factor = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for g in &mut self.groups {
                    let _ = g.grads.g_mul_scalar_(factor);
                }
            });
        }
        norm
    }

    /// `buf = momentum * buf + (grad + wd * w)`, `w -= lr * buf`, in place (the gradient
    /// buffer becomes the direction; the next `zero_grad` clears it).
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for g in &mut self.groups {
                if g.values.numel() == 0 {
                    continue;
                }
                if g.decay && self.weight_decay != 0.0 {
                    let _ = g.values.mul_scalar_out(&g.scratch, self.weight_decay);
                    let _ = g.grads.g_add_(&g.scratch);
                }
                if g.started {
                    let _ = g.momentum.g_mul_scalar_(self.momentum).g_add_(&g.grads);
                } else {
                    g.momentum.copy_(&g.grads);
                    g.started = true;
                }
                let _ = g.momentum.mul_scalar_out(&g.scratch, lr);
                let _ = g.values.g_sub_(&g.scratch);
            }
        });
    }

    /// Momentum buffers by parameter name (views of the flat buffers), for checkpoints;
    /// none before the first step.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .filter(|g| g.started)
            .flat_map(|g| {
                g.members
                    .iter()
                    .map(|m| (m.name.clone(), m.view_of(&g.momentum)))
            })
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        let mut by_name: HashMap<String, Tensor> = state.into_iter().collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            for g in &mut self.groups {
                for m in &g.members {
                    if let Some(buf) = by_name.remove(&m.name) {
                        anyhow::ensure!(
                            buf.size() == m.shape,
                            "momentum buffer {} has shape {:?}, the parameter {:?}",
                            m.name,
                            buf.size(),
                            m.shape
                        );
                        m.view_of(&g.momentum).copy_(&buf);
                        g.started = true;
                    }
                }
            }
            Ok(())
        })?;
        if let Some(name) = by_name.keys().next() {
            anyhow::bail!("momentum buffer for unknown parameter {name}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::QuantRegistry;
    use tch::{Device, Kind};

    fn variables(pairs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
        pairs
            .iter()
            .map(|(name, t)| (name.to_string(), t.shallow_clone()))
            .collect()
    }

    #[test]
    fn matches_the_pytorch_update_rule() {
        let w = Tensor::from_slice(&[1.0f32, -2.0])
            .view([1, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let flat = FlatParameters::new(
            variables(&[("w", &w), ("b", &b)]),
            &QuantRegistry::default(),
        )
        .unwrap();
        let mut sgd = Sgd::new(&flat, 0.9, 0.1);
        for _ in 0..2 {
            sgd.zero_grad();
            let loss = (&w * 3.0).sum(Kind::Float) + (&b * 2.0).sum(Kind::Float);
            loss.backward();
            sgd.step(0.5);
        }
        // w: g = 3 + 0.1 w. Step 1: buf = 3.1, w = 1 - 1.55 = -0.55;
        // step 2: g = 3 - 0.055 = 2.945, buf = 2.79 + 2.945 = 5.735, w = -0.55 - 2.8675.
        let w0 = w.double_value(&[0, 0]);
        assert!((w0 - (-3.4175)).abs() < 1e-5, "{w0}");
        // b: no weight decay. buf 2 then 3.8; b = 0.5 - 1 - 1.9.
        assert!((b.double_value(&[0]) - (-2.4)).abs() < 1e-5);
        let state = sgd.state();
        assert_eq!(state.len(), 2);
        let w2 = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b2 = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let flat2 = FlatParameters::new(
            variables(&[("w", &w2), ("b", &b2)]),
            &QuantRegistry::default(),
        )
        .unwrap();
        let mut restored = Sgd::new(&flat2, 0.9, 0.1);
        restored.load_state(state).unwrap();
        assert_eq!(restored.state().len(), 2);
    }

    /// Five steps of the flat optimizer (with clipping) equal five steps of the per-tensor
    /// rule, written out here tensor by tensor, bit for bit.
    #[test]
    fn flat_steps_equal_per_tensor_steps() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let shapes: [&[i64]; 5] = [&[8, 3, 3, 3], &[8], &[10, 72], &[10], &[4, 4, 1, 1]];
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, opts).set_requires_grad(true))
            .collect();
        let reference: Vec<Tensor> = params
            .iter()
            .map(|p| p.detach().copy().set_requires_grad(true))
            .collect();
        let names: Vec<String> = (0..params.len()).map(|i| format!("p{i}")).collect();
        let flat = FlatParameters::new(
            names
                .iter()
                .cloned()
                .zip(params.iter().map(|p| p.shallow_clone()))
                .collect(),
            &QuantRegistry::default(),
        )
        .unwrap();
        let (momentum, decay, lr, max_norm) = (0.9, 5e-4, 0.01, 3.0);
        let mut sgd = Sgd::new(&flat, momentum, decay);
        let mut buffers: Vec<Option<Tensor>> = params.iter().map(|_| None).collect();
        let loss = |ps: &[Tensor], step: i64| {
            ps.iter()
                .enumerate()
                .map(|(i, p)| (p * p * (i as f64 + 1.0) + p * step as f64).sum(Kind::Float))
                .fold(Tensor::zeros([], opts), |a, b| a + b)
        };
        for step in 0..5 {
            sgd.zero_grad();
            loss(&params, step).backward();
            sgd.clip_grad_norm(max_norm);
            sgd.step(lr);

            for p in &reference {
                p.shallow_clone().zero_grad();
            }
            loss(&reference, step).backward();
            let grads: Vec<Tensor> = reference.iter().map(|p| p.grad()).collect();
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let norm = Tensor::stack(&norms, 0).norm().double_value(&[]);
            tch::no_grad(|| {
                for ((p, g), buf) in reference.iter().zip(&grads).zip(buffers.iter_mut()) {
                    let mut g = g.shallow_clone();
                    if norm > max_norm {
                        let _ = g.g_mul_scalar_(max_norm / (norm + 1e-6));
                    }
                    let direction = if p.dim() > 1 { &g + p * decay } else { g };
                    let next = match buf.take() {
                        Some(mut b) => {
                            let _ = b.g_mul_scalar_(momentum).g_add_(&direction);
                            b
                        }
                        None => direction.copy(),
                    };
                    let _ = p.shallow_clone().g_sub_(&(&next * lr));
                    *buf = Some(next);
                }
            });
        }
        for (i, (p, r)) in params.iter().zip(&reference).enumerate() {
            assert!(p.equal(r), "parameter {i} differs after 5 steps");
        }
    }
}
