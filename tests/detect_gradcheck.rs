//! Finite-difference checks of the RoI pooling gradients (f64, CPU).
use lbwnet::detect::roi_align::roi_align;
use lbwnet::detect::roi_pool::roi_pool;
use tch::{Device, Kind, Tensor};

const OPTIONS: (Kind, Device) = (Kind::Double, Device::Cpu);

/// RoIs on a 2-image 5x6 map at scale 1/2: inside, partly outside, tiny, degenerate.
fn rois() -> Tensor {
    let rows: [[f64; 5]; 6] = [
        [0.0, 1.5, 2.0, 8.25, 7.0],
        [1.0, -3.0, -2.5, 4.0, 5.5],
        [0.0, 6.0, 4.5, 14.0, 11.5],
        [1.0, 3.3, 2.1, 3.9, 2.6],
        [0.0, 5.0, 5.0, 5.0, 5.0],
        [1.0, -1.0, 3.0, 13.0, 9.0],
    ];
    Tensor::from_slice(rows.as_flattened())
        .view([6, 5])
        .to_kind(Kind::Double)
}

/// Compares the autograd gradient of `sum(f(x) * upstream)` with central differences.
fn check_gradient(what: &str, f: impl Fn(&Tensor) -> Tensor) {
    tch::manual_seed(5);
    let input = Tensor::rand([2, 2, 5, 6], OPTIONS) * 4.0 - 2.0;
    let upstream = Tensor::rand(f(&input).size(), OPTIONS) - 0.5;
    let objective = |x: &Tensor| (f(x) * &upstream).sum(Kind::Double).double_value(&[]);

    let x = input.copy().set_requires_grad(true);
    (f(&x) * &upstream).sum(Kind::Double).backward();
    let analytic = x.grad().view([-1]);

    let eps = 1e-6;
    let flat = input.view([-1]);
    let mut worst: f64 = 0.0;
    for i in 0..flat.size()[0] {
        let plus = flat.copy();
        let _ = plus.get(i).g_add_scalar_(eps);
        let minus = flat.copy();
        let _ = minus.get(i).g_add_scalar_(-eps);
        let shape = input.size();
        let numeric = (objective(&plus.view(shape.as_slice()))
            - objective(&minus.view(shape.as_slice())))
            / (2.0 * eps);
        worst = worst.max((numeric - analytic.double_value(&[i])).abs());
    }
    assert!(
        worst < 1e-6,
        "{what}: gradient differs from finite differences by {worst}"
    );
    assert!(
        analytic.abs().sum(Kind::Double).double_value(&[]) > 0.1,
        "{what}: gradient vanishes"
    );
}

#[test]
fn roi_align_gradient_matches_finite_differences() {
    for aligned in [false, true] {
        for ratio in [2, 0] {
            check_gradient(&format!("roi_align aligned={aligned} ratio={ratio}"), |x| {
                roi_align(x, &rois(), (3, 2), 0.5, ratio, aligned)
            });
        }
    }
}

#[test]
fn roi_pool_gradient_matches_finite_differences() {
    // Distinct random values: a small perturbation never changes a bin's argmax.
    check_gradient("roi_pool", |x| roi_pool(x, &rois(), (3, 2), 0.5));
}
