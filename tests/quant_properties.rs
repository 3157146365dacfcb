//! The quantizers against their definitions (SPEC §1): brute-force optima for small N,
//! nearest-level thresholding, the level sets, signs, scale equivariance, idempotence,
//! degenerate inputs.
use lbwnet::quant::{default_c, quantize, quantize_codes, LevelSet, Method, QuantSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

const ALL_METHODS: [Method; 6] = [
    Method::Lbw,
    Method::Exact,
    Method::Ternary,
    Method::Twn,
    Method::Pow2,
    Method::Uniform,
];

fn spec(method: Method, bits: u32) -> QuantSpec {
    QuantSpec::new(method, bits, None).unwrap()
}

/// Every (method, bits) pair the CLI accepts.
fn all_specs() -> Vec<QuantSpec> {
    let mut specs = vec![spec(Method::Ternary, 2), spec(Method::Twn, 2)];
    for bits in 2..=8 {
        for method in [Method::Lbw, Method::Exact, Method::Pow2, Method::Uniform] {
            specs.push(spec(method, bits));
        }
    }
    specs
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn sq_error(w: &[f32], q: &[f32]) -> f64 {
    w.iter()
        .zip(q)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

fn error_of(w: &[f32], spec: &QuantSpec) -> f64 {
    sq_error(w, &to_vec(&quantize(&Tensor::from_slice(w), spec)))
}

/// Random weights of a few shapes of distribution, with ties and zeros mixed in.
fn random_weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let kind = rng.gen_range(0..4);
    (0..n)
        .map(|_| {
            let x: f32 = match kind {
                0 => rng.gen_range(-1.0..1.0),
                1 => rng.gen_range(-1.0f32..1.0).powi(3),
                2 => (rng.gen_range(0.0..6.0f32)).round() * 0.25 - 0.75,
                _ => rng.gen_range(-1.0f32..1.0) * if rng.gen_bool(0.2) { 20.0 } else { 0.1 },
            };
            x
        })
        .collect()
}

/// The optimum of `||w - alpha q||^2` over all sign-consistent assignments of `levels`
/// (with the closed-form alpha = A/B for each) and over a fine grid of alpha with the
/// nearest level per weight.
fn brute_force_optimum(w: &[f32], levels: &[f64]) -> f64 {
    let a: Vec<f64> = w.iter().map(|&x| f64::from(x.abs())).collect();
    let total: f64 = a.iter().map(|x| x * x).sum();
    let mut best = total;
    let mut assignment = vec![0usize; a.len()];
    loop {
        let dot: f64 = a.iter().zip(&assignment).map(|(x, &k)| x * levels[k]).sum();
        let norm: f64 = assignment.iter().map(|&k| levels[k] * levels[k]).sum();
        if norm > 0.0 {
            best = best.min(total - dot * dot / norm);
        }
        // Next assignment, odometer style.
        let mut i = 0;
        loop {
            if i == a.len() {
                let max = a.iter().cloned().fold(0.0, f64::max);
                for step in 1..=4000 {
                    let alpha = 2.0 * max * f64::from(step) / 4000.0;
                    let err: f64 = a
                        .iter()
                        .map(|x| {
                            levels
                                .iter()
                                .map(|l| (x - alpha * l).powi(2))
                                .fold(f64::INFINITY, f64::min)
                        })
                        .sum();
                    best = best.min(err);
                }
                return best;
            }
            assignment[i] += 1;
            if assignment[i] < levels.len() {
                break;
            }
            assignment[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn ternary_and_exact_reach_the_brute_force_optimum() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (bits, n, trials) in [(2u32, 7usize, 40), (3, 6, 30), (4, 5, 20), (5, 4, 10)] {
        let levels = LevelSet::powers_of_two(bits).magnitudes();
        for trial in 0..trials {
            let w = random_weights(&mut rng, n);
            let optimum = brute_force_optimum(&w, &levels);
            let tolerance = 1e-5 * (optimum + 1e-6);
            let exact = error_of(&w, &spec(Method::Exact, bits));
            assert!(
                (exact - optimum).abs() <= tolerance,
                "exact, {bits} bits, trial {trial}: {exact} vs optimum {optimum} for {w:?}"
            );
            if bits == 2 {
                let ternary = error_of(&w, &spec(Method::Ternary, 2));
                assert!(
                    (ternary - optimum).abs() <= tolerance,
                    "ternary, trial {trial}: {ternary} vs optimum {optimum} for {w:?}"
                );
            }
        }
    }
}

/// The optimal error by the plain breakpoint sweep of SPEC §1.4: all `N n` breakpoints
/// `|w_i| / m_j` sorted and passed one at a time (A and B from per-level counts and sums,
/// so they cannot drift).
fn full_sweep_optimum(w: &[f32], levels: &[f64]) -> f64 {
    let a: Vec<f64> = w
        .iter()
        .map(|&x| f64::from(x.abs()))
        .filter(|&x| x > 0.0)
        .collect();
    let total: f64 = a.iter().map(|x| x * x).sum();
    let mut breakpoints: Vec<(f64, f64, usize)> = vec![];
    for &x in &a {
        for j in 0..levels.len() - 1 {
            breakpoints.push((x / (0.5 * (levels[j] + levels[j + 1])), x, j));
        }
    }
    breakpoints.sort_by(|p, q| p.0.total_cmp(&q.0));
    // Alpha near 0: every nonzero weight on the top level.
    let top = levels.len() - 1;
    let mut count = vec![0.0f64; levels.len()];
    let mut sum = vec![0.0f64; levels.len()];
    count[top] = a.len() as f64;
    sum[top] = a.iter().sum();
    let mut best: f64 = 0.0;
    for step in std::iter::once(None).chain(breakpoints.iter().map(Some)) {
        if let Some(&(_, x, j)) = step {
            count[j + 1] -= 1.0;
            sum[j + 1] -= x;
            count[j] += 1.0;
            sum[j] += x;
        }
        let dot: f64 = levels.iter().zip(&sum).map(|(l, s)| l * s).sum();
        let norm: f64 = levels.iter().zip(&count).map(|(l, c)| l * l * c).sum();
        if norm > 0.0 {
            best = best.max(dot * dot / norm);
        }
    }
    total - best
}

#[test]
fn exact_matches_the_full_breakpoint_sweep() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for bits in 2..=7 {
        let levels = LevelSet::powers_of_two(bits).magnitudes();
        for n in [50, 3000, 20_000] {
            let w = random_weights(&mut rng, n);
            let reference = full_sweep_optimum(&w, &levels);
            let exact = error_of(&w, &spec(Method::Exact, bits));
            assert!(
                (exact - reference).abs() <= 1e-6 * reference.max(1e-12),
                "{bits} bits, n {n}: exact {exact}, full sweep {reference}"
            );
        }
    }
}

#[test]
fn exact_is_never_worse_than_lbw_at_any_c() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for bits in 2..=8 {
        for _ in 0..3 {
            let w = random_weights(&mut rng, 2000);
            let exact = error_of(&w, &spec(Method::Exact, bits));
            for step in 1..=60 {
                let c = f64::from(step) * 0.2;
                let lbw = error_of(&w, &QuantSpec::new(Method::Lbw, bits, Some(c)).unwrap());
                assert!(
                    exact <= lbw * (1.0 + 1e-6) + 1e-12,
                    "{bits} bits, c {c}: exact {exact} > lbw {lbw}"
                );
            }
        }
    }
}

#[test]
fn exact_at_two_bits_matches_ternary() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for n in [1, 2, 10, 1000, 100_000] {
        let w = random_weights(&mut rng, n);
        let (exact, ternary) = (
            error_of(&w, &spec(Method::Exact, 2)),
            error_of(&w, &spec(Method::Ternary, 2)),
        );
        assert!(
            (exact - ternary).abs() <= 1e-6 * ternary.max(1e-12),
            "n {n}: exact {exact}, ternary {ternary}"
        );
    }
}

/// Nearest level of `r` among `levels` by distance, ties to the larger level.
fn nearest_level(r: f32, levels: &[f64]) -> usize {
    let r = f64::from(r);
    let mut best = 0;
    for (k, level) in levels.iter().enumerate() {
        if (r - level).abs() <= (r - levels[best]).abs() {
            best = k;
        }
    }
    best
}

#[test]
fn lbw_is_nearest_level_thresholding_at_c_times_mean_abs() {
    tch::manual_seed(4);
    let w = Tensor::randn([30_000], (Kind::Float, Device::Cpu)) * 0.02;
    let values = to_vec(&w);
    let mean_abs = values.iter().map(|x| f64::from(x.abs())).sum::<f64>() / values.len() as f64;
    for bits in 2..=8 {
        for c in [0.5, 1.7, default_c(bits).unwrap(), 9.0] {
            let q = quantize_codes(&w, &QuantSpec::new(Method::Lbw, bits, Some(c)).unwrap());
            let alpha = q.alpha() as f32;
            assert!(
                (f64::from(alpha) / (c * mean_abs) - 1.0).abs() < 1e-6,
                "alpha {alpha} at c {c}"
            );
            let levels = q.levels.magnitudes();
            let codes = Vec::<i8>::try_from(&q.codes).unwrap();
            for (&x, &code) in values.iter().zip(&codes) {
                let expected = nearest_level(x.abs() / alpha, &levels) as i8;
                let expected = if x < 0.0 { -expected } else { expected };
                assert_eq!(code, expected, "{bits} bits, c {c}, w {x}, alpha {alpha}");
            }
        }
    }
}

#[test]
fn cuts_sit_at_the_level_midpoints_and_ties_go_up() {
    // pow2 shares lbw's nearest-level kernel and gets alpha = 1 exactly from max|W| = 1.4.
    // 4 bits: levels 1/8, 1/4, 1/2, 1 with cuts 1/16 (from 0), 3/16, 3/8, 3/4.
    let mut w = vec![];
    for cut in [0.0625f32, 0.1875, 0.375, 0.75] {
        w.extend([cut, -f32::from_bits(cut.to_bits() - 1)]);
    }
    w.extend([1.0, 1.4]);
    let q = quantize_codes(&Tensor::from_slice(&w), &spec(Method::Pow2, 4));
    assert_eq!(q.alpha(), 1.0);
    assert_eq!(
        Vec::<i8>::try_from(&q.codes).unwrap(),
        vec![1, 0, 2, -1, 3, -2, 4, -3, 4, 4]
    );
}

#[test]
fn outputs_lie_in_alpha_times_the_level_set_with_signs_kept() {
    tch::manual_seed(9);
    let w = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 0.1;
    let values = to_vec(&w);
    for spec in all_specs() {
        let q = quantize_codes(&w, &spec);
        let out = quantize(&w, &spec);
        assert_eq!(out.size(), w.size());
        let alpha = q.alpha() as f32;
        let levels = q.levels.magnitudes();
        let codes = Vec::<i8>::try_from(&q.codes.flatten(0, -1)).unwrap();
        for ((&x, &y), &code) in values.iter().zip(&to_vec(&out)).zip(&codes) {
            let level = levels[code.unsigned_abs() as usize] as f32;
            assert_eq!(
                y.abs(),
                alpha * level,
                "{spec:?}: {y} is not alpha {alpha} times level {level}"
            );
            if y != 0.0 {
                assert_eq!(y < 0.0, x < 0.0, "{spec:?}: sign of {x} lost");
            }
        }
        assert!(codes.iter().any(|&c| c != 0), "{spec:?} zeroed everything");
    }
}

#[test]
fn positive_scaling_commutes_with_the_quantizers() {
    tch::manual_seed(21);
    let w = Tensor::randn([5000], (Kind::Float, Device::Cpu)) * 0.03;
    for spec in all_specs() {
        let base = quantize(&w, &spec);
        // Powers of two scale every intermediate exactly.
        for s in [0.25, 8.0] {
            assert!(
                quantize(&(&w * s), &spec).equal(&(&base * s)),
                "{spec:?}, s {s}"
            );
        }
        // pow2's alpha is a power of two by definition: other factors change its grid.
        if spec.method == Method::Pow2 {
            continue;
        }
        let s = 3.7;
        let scaled = quantize(&(&w * s), &spec);
        let base_error = (&w - &base).square().sum(Kind::Double).double_value(&[]);
        let scaled_error = (&w * s - &scaled)
            .square()
            .sum(Kind::Double)
            .double_value(&[]);
        assert!(
            (scaled_error / (s * s * base_error) - 1.0).abs() < 1e-4,
            "{spec:?}: error {scaled_error} at s {s}, {base_error} unscaled"
        );
        // Rounding may move a weight sitting on a cut (exact may also pick another of
        // equally good scales, so only its error is compared).
        if spec.method != Method::Exact {
            let moved = (scaled - &base * s)
                .abs()
                .gt(1e-6)
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert!(moved <= 5, "{spec:?}: {moved} weights differ at s {s}");
        }
    }
}

#[test]
fn ternary_and_exact_are_idempotent() {
    tch::manual_seed(8);
    for (size, scale) in [(10, 1.0), (3000, 0.05), (200_000, 0.01)] {
        let w = Tensor::randn([size], (Kind::Float, Device::Cpu)) * scale;
        let mut specs = vec![spec(Method::Ternary, 2)];
        specs.extend((2..=8).map(|bits| spec(Method::Exact, bits)));
        for spec in specs {
            let once = quantize(&w, &spec);
            assert!(quantize(&once, &spec).equal(&once), "{spec:?}, size {size}");
        }
    }
}

#[test]
fn all_zero_empty_and_scalar_inputs() {
    for spec in all_specs() {
        let zeros = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let q = quantize_codes(&zeros, &spec);
        assert_eq!(q.alpha(), 0.0, "{spec:?}");
        assert_eq!(q.nonzero_fraction(), 0.0, "{spec:?}");
        assert!(quantize(&zeros, &spec).equal(&zeros), "{spec:?}");
        let empty = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
        assert_eq!(quantize(&empty, &spec).size(), vec![0, 5], "{spec:?}");
        let scalar = Tensor::from(-0.3f32);
        let out = quantize(&scalar, &spec);
        assert_eq!(out.size(), Vec::<i64>::new(), "{spec:?}");
        assert!(
            out.double_value(&[]) < 0.0,
            "{spec:?}: {}",
            out.double_value(&[])
        );
    }
}

#[test]
fn dtype_shape_and_level_counts_are_kept() {
    tch::manual_seed(1);
    let w = Tensor::randn([6, 7], (Kind::Double, Device::Cpu));
    for method in ALL_METHODS {
        let spec = spec(
            method,
            if matches!(method, Method::Ternary | Method::Twn) {
                2
            } else {
                4
            },
        );
        let out = quantize(&w, &spec);
        assert_eq!(
            (out.kind(), out.size()),
            (Kind::Double, vec![6, 7]),
            "{spec:?}"
        );
        let q = quantize_codes(&w, &spec);
        let counts = q.level_counts();
        assert_eq!(counts.len(), q.levels.max_code() as usize + 1);
        assert_eq!(counts.iter().sum::<u64>(), 42);
        assert!((q.nonzero_fraction() - (42 - counts[0]) as f64 / 42.0).abs() < 1e-12);
    }
}

#[test]
fn baselines_follow_their_definitions() {
    let w = [0.9f32, -0.5, 0.2, -0.05, 0.01, 0.0, 0.35, -0.7];
    let t = Tensor::from_slice(&w);
    let mean = w.iter().map(|x| x.abs()).sum::<f32>() / w.len() as f32;
    // TWN: delta = 0.7 mean|W|, alpha = mean of the |W| above it.
    let twn = quantize_codes(&t, &spec(Method::Twn, 2));
    let kept: Vec<f32> = w
        .iter()
        .map(|x| x.abs())
        .filter(|&x| x > 0.7 * mean)
        .collect();
    assert!((twn.alpha() - f64::from(kept.iter().sum::<f32>() / kept.len() as f32)).abs() < 1e-6);
    assert_eq!(
        Vec::<i8>::try_from(&twn.codes).unwrap(),
        vec![1, -1, 0, 0, 0, 0, 1, -1]
    );
    // pow2: alpha = 2^floor(log2(4/3 * 0.9)) = 1; nearest levels of {1, 1/2, 1/4} at 3 bits.
    let pow2 = quantize_codes(&t, &spec(Method::Pow2, 3));
    assert_eq!(pow2.alpha(), 1.0);
    assert_eq!(
        Vec::<i8>::try_from(&pow2.codes).unwrap(),
        vec![2, -1, 0, 0, 0, 0, 1, -1]
    );
    // uniform, 3 bits: 3 positive levels, step 0.9 / 3.
    let uniform = quantize_codes(&t, &spec(Method::Uniform, 3));
    assert!((uniform.alpha() - 0.3).abs() < 1e-7);
    assert_eq!(
        Vec::<i8>::try_from(&uniform.codes).unwrap(),
        vec![3, -2, 1, 0, 0, 0, 1, -2]
    );
}

#[test]
fn specs_are_checked() {
    assert!(QuantSpec::new(Method::Lbw, 1, None).is_err());
    assert!(QuantSpec::new(Method::Lbw, 9, None).is_err());
    assert!(QuantSpec::new(Method::Lbw, 4, Some(0.0)).is_err());
    assert!(QuantSpec::new(Method::Lbw, 4, Some(-1.0)).is_err());
    assert!(QuantSpec::new(Method::Lbw, 4, Some(f64::NAN)).is_err());
    assert!(QuantSpec::new(Method::Ternary, 4, None).is_err());
    assert_eq!(QuantSpec::new(Method::Lbw, 6, None).unwrap().c, 7.2);
    for bits in 2..=8 {
        assert!(default_c(bits).is_some_and(|c| c > 0.0));
    }
    assert_eq!(default_c(32), None);
}
