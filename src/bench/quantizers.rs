//! The quantizer benchmark behind `lbwnet bench quantize` and `cargo bench`: every method
//! on a ResNet-50-shaped set of weight tensors, as medians of repeated runs, against a
//! plain copy of the same tensors (the memory-bound floor) and one full sort of them.
use super::{elapsed_ms, sync};
use crate::quant::{quantize, FlatSegments, Method, QuantSpec};
use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Goals for this benchmark on the project's 2-core machine.
const LBW_MAX_VS_COPY: f64 = 4.0;
const TERNARY_MAX_VS_SORT: f64 = 1.5;
const EXACT_MAX_MS: f64 = 10_000.0;

/// The conv and fc weight shapes of torchvision's ResNet-50 (54 tensors, 25,502,912
/// weights; the largest is layer4's 3x3 conv, 2,359,296).
pub fn resnet50_weight_shapes() -> Vec<Vec<i64>> {
    let mut shapes = vec![vec![64, 3, 7, 7]];
    let mut in_channels = 64;
    for (width, blocks) in [(64, 3), (128, 4), (256, 6), (512, 3)] {
        for block in 0..blocks {
            shapes.push(vec![width, in_channels, 1, 1]);
            shapes.push(vec![width, width, 3, 3]);
            shapes.push(vec![4 * width, width, 1, 1]);
            if block == 0 {
                shapes.push(vec![4 * width, in_channels, 1, 1]);
            }
            in_channels = 4 * width;
        }
    }
    shapes.push(vec![1000, 2048]);
    shapes
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed runs per row (after one warm-up run); the median is reported.
    pub repeats: usize,
    /// Bit-width for lbw, exact, pow2 and uniform (ternary and twn use 2).
    pub bits: u32,
    pub device: Device,
    pub seed: i64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            repeats: 5,
            bits: 6,
            device: Device::Cpu,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `copy`, `sort` or a method name.
    pub name: String,
    /// None for the copy and sort rows.
    pub bits: Option<u32>,
    pub median_ms: f64,
    pub vs_copy: f64,
    pub vs_sort: f64,
    /// The goal this row is held to, if any, and whether the run met it.
    pub goal: Option<String>,
    pub goal_met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub threads: i32,
    pub tensors: usize,
    pub weights: i64,
    pub repeats: usize,
    pub rows: Vec<BenchRow>,
}

/// Median wall time in milliseconds of `repeats` runs of `run` after one warm-up (the upper
/// middle run for an even count, as the tables have always reported).
fn median_ms(repeats: usize, device: Device, mut run: impl FnMut()) -> f64 {
    run();
    sync(device);
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| elapsed_ms(device, &mut run).1)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs the benchmark: He-normal weights from `seed`, then copy, sort, every method, and
/// lbw as one flat pass.
pub fn bench_quantizers(options: &BenchOptions) -> Result<BenchReport> {
    let _guard = tch::no_grad_guard();
    let weights = he_normal_weights(options);
    let (repeats, device) = (options.repeats, options.device);
    let copy_ms = median_ms(repeats, device, || {
        for w in &weights {
            drop(w.copy());
        }
    });
    let sort_ms = median_ms(repeats, device, || {
        for w in &weights {
            drop(w.flatten(0, -1).sort(0, true));
        }
    });
    let row = |name: &str, bits: Option<u32>, ms: f64| BenchRow {
        name: name.into(),
        bits,
        median_ms: ms,
        vs_copy: ms / copy_ms,
        vs_sort: ms / sort_ms,
        goal: None,
        goal_met: None,
    };
    let mut rows = vec![row("copy", None, copy_ms), row("sort", None, sort_ms)];
    let methods = [
        (Method::Lbw, options.bits),
        (Method::Ternary, 2),
        (Method::Exact, options.bits),
        (Method::Twn, 2),
        (Method::Pow2, options.bits),
        (Method::Uniform, options.bits),
    ];
    for (method, bits) in methods {
        let spec = QuantSpec::new(method, bits, None)?;
        let ms = median_ms(repeats, device, || {
            for w in &weights {
                drop(quantize(w, &spec));
            }
        });
        rows.push(with_goal(row(method.name(), Some(bits), ms), method));
    }
    let ms = flat_pass_ms(&weights, options)?;
    rows.push(row("lbw flat pass", Some(options.bits), ms));
    Ok(BenchReport {
        device: format!("{:?}", options.device),
        threads: tch::get_num_threads(),
        tensors: weights.len(),
        weights: weights.iter().map(|w| w.numel() as i64).sum(),
        repeats,
        rows,
    })
}

/// ResNet-50's weight shapes with He-normal values from `options.seed`.
fn he_normal_weights(options: &BenchOptions) -> Vec<Tensor> {
    tch::manual_seed(options.seed);
    resnet50_weight_shapes()
        .iter()
        .map(|shape| {
            let fan_in: i64 = shape[1..].iter().product();
            Tensor::randn(shape.as_slice(), (Kind::Float, options.device))
                * (2.0 / fan_in as f64).sqrt()
        })
        .collect()
}

/// `row` with this project's goal for `method`, and whether it was met.
fn with_goal(row: BenchRow, method: Method) -> BenchRow {
    let (goal, goal_met) = match method {
        Method::Lbw => (
            format!("<= {LBW_MAX_VS_COPY}x copy"),
            row.vs_copy <= LBW_MAX_VS_COPY,
        ),
        Method::Ternary => (
            format!("<= {TERNARY_MAX_VS_SORT}x sort"),
            row.vs_sort <= TERNARY_MAX_VS_SORT,
        ),
        Method::Exact if row.bits == Some(6) => (
            format!("< {} s", EXACT_MAX_MS / 1e3),
            row.median_ms < EXACT_MAX_MS,
        ),
        _ => return row,
    };
    BenchRow {
        goal: Some(goal),
        goal_met: Some(goal_met),
        ..row
    }
}

/// Median ms of lbw over all of `weights` as one flat pass (what training runs each step).
fn flat_pass_ms(weights: &[Tensor], options: &BenchOptions) -> Result<f64> {
    let spec = QuantSpec::new(Method::Lbw, options.bits, None)?;
    let numels = weights.iter().map(|w| w.numel() as i64).collect();
    let segments = FlatSegments::new(spec, numels, options.device)?;
    let flat = segments.lay_out(weights);
    let mut out = flat.empty_like();
    Ok(median_ms(options.repeats, options.device, || {
        segments.quantize_into(&flat, &mut out)
    }))
}

impl BenchReport {
    /// A plain-text table of the rows.
    pub fn table(&self) -> String {
        let mut out = format!(
            "quantizers on {} ResNet-50 weight tensors ({} weights), {}, {} threads, median of {} runs\n",
            self.tensors, self.weights, self.device, self.threads, self.repeats
        );
        out += &format!(
            "{:<8} {:>4} {:>11} {:>8} {:>8}  goal\n",
            "method", "bits", "median ms", "x copy", "x sort"
        );
        for row in &self.rows {
            let bits = row.bits.map_or("-".to_string(), |b| b.to_string());
            let goal = match (&row.goal, row.goal_met) {
                (Some(goal), Some(met)) => {
                    format!("{goal}: {}", if met { "met" } else { "MISSED" })
                }
                _ => String::new(),
            };
            out += &format!(
                "{:<8} {:>4} {:>11.1} {:>8.2} {:>8.2}  {goal}\n",
                row.name, bits, row.median_ms, row.vs_copy, row.vs_sort
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resnet50_shapes_match_torchvision() {
        let shapes = super::resnet50_weight_shapes();
        let sizes: Vec<i64> = shapes.iter().map(|s| s.iter().product()).collect();
        assert_eq!(shapes.len(), 54);
        assert_eq!(sizes.iter().sum::<i64>(), 25_502_912);
        assert_eq!(sizes.iter().max(), Some(&2_359_296));
    }
}
