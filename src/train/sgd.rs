//! SGD with momentum and weight decay (PyTorch's update rule), written here rather than
//! taken from tch so its momentum buffers can be checkpointed and restored on resume.
use std::collections::HashMap;
use tch::Tensor;

struct Param {
    name: String,
    tensor: Tensor,
    /// Weight decay applies to conv / fc weights, not to biases and norm parameters.
    decay: bool,
    momentum: Option<Tensor>,
}

pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// Optimizes the trainable variables among `variables` (name → tensor).
    pub fn new(variables: HashMap<String, Tensor>, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<Param> = variables
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, tensor)| Param {
                decay: tensor.dim() > 1,
                name,
                tensor,
                momentum: None,
            })
            .collect();
        // A fixed order makes updates and checkpoints deterministic.
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            params,
            momentum,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut grad = p.tensor.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm`; returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norm = tch::no_grad(|| {
            Tensor::stack(&grads.iter().map(|g| g.norm()).collect::<Vec<_>>(), 0).norm()
        })
        .double_value(&[]);
        if max_norm > 0.0 && norm > max_norm {
            let factor = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(factor);
                }
            });
        }
        norm
    }

    /// `buf = momentum * buf + (grad + wd * w)`, `w -= lr * buf`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let direction = if p.decay && self.weight_decay != 0.0 {
                    &grad + &p.tensor * self.weight_decay
                } else {
                    grad
                };
                let buf = match p.momentum.take() {
                    Some(mut buf) => {
                        let _ = buf.g_mul_scalar_(self.momentum).g_add_(&direction);
                        buf
                    }
                    None => direction.detach().copy(),
                };
                let _ = p.tensor.g_sub_(&(&buf * lr));
                p.momentum = Some(buf);
            }
        });
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| {
                p.momentum
                    .as_ref()
                    .map(|m| (p.name.clone(), m.shallow_clone()))
            })
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        let mut by_name: HashMap<String, Tensor> = state.into_iter().collect();
        for p in &mut self.params {
            if let Some(buf) = by_name.remove(&p.name) {
                anyhow::ensure!(
                    buf.size() == p.tensor.size(),
                    "momentum buffer {} has shape {:?}, the parameter {:?}",
                    p.name,
                    buf.size(),
                    p.tensor.size()
                );
                p.momentum = Some(buf.to_device(p.tensor.device()));
            }
        }
        if let Some(name) = by_name.keys().next() {
            anyhow::bail!("momentum buffer for unknown parameter {name}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn matches_the_pytorch_update_rule() {
        let w = Tensor::from_slice(&[1.0f32, -2.0])
            .view([1, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let vars = HashMap::from([
            ("w".to_string(), w.shallow_clone()),
            ("b".to_string(), b.shallow_clone()),
        ]);
        let mut sgd = Sgd::new(vars, 0.9, 0.1);
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
        let mut restored = Sgd::new(
            HashMap::from([("w".to_string(), w2), ("b".to_string(), b2)]),
            0.9,
            0.1,
        );
        restored.load_state(state).unwrap();
        assert_eq!(restored.state().len(), 2);
    }
}
