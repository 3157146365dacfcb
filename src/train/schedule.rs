//! Learning rate per iteration: linear warm-up, then steps (py-faster-rcnn's step policy
//! with detectron2's warm-up).
use crate::config::TrainConfig;

pub fn learning_rate(cfg: &TrainConfig, iteration: usize) -> f64 {
    let decays = cfg
        .lr_steps
        .iter()
        .filter(|&&step| iteration >= step)
        .count();
    let mut lr = cfg.lr * cfg.gamma.powi(decays as i32);
    if iteration < cfg.warmup_iterations {
        let progress = iteration as f64 / cfg.warmup_iterations as f64;
        lr *= cfg.warmup_factor + (1.0 - cfg.warmup_factor) * progress;
    }
    lr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_steps() {
        let cfg = TrainConfig {
            lr: 0.01,
            lr_steps: vec![100, 200],
            gamma: 0.1,
            warmup_iterations: 10,
            warmup_factor: 0.5,
            ..TrainConfig::default()
        };
        assert!((learning_rate(&cfg, 0) - 0.005).abs() < 1e-12);
        assert!((learning_rate(&cfg, 5) - 0.0075).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&cfg, 99) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&cfg, 100) - 0.001).abs() < 1e-12);
        assert!((learning_rate(&cfg, 250) - 0.0001).abs() < 1e-12);
    }
}
