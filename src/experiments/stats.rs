//! Spread over seeds: mean, sample standard deviation and the two-sided 95% Student-t
//! confidence interval of the mean, the figures every sweep row reports.
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Summary of one quantity measured once per seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator); none for a single value.
    pub std: Option<f64>,
    /// `mean ∓ t(0.975, n-1) * std / sqrt(n)`; none for a single value.
    pub ci95: Option<[f64; 2]>,
}

impl SeedSummary {
    /// Summarizes `values` (at least one).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        assert!(n > 0, "a summary needs at least one value");
        let mean = values.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Self {
                n,
                mean,
                std: None,
                ci95: None,
            };
        }
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = variance.sqrt();
        let half = t_quantile_975(n - 1) * std / (n as f64).sqrt();
        Self {
            n,
            mean,
            std: Some(std),
            ci95: Some([mean - half, mean + half]),
        }
    }

    /// Whether the 95% interval lies wholly on one side of zero (for paired differences:
    /// a difference the seeds support). Never with a single seed.
    pub fn excludes_zero(&self) -> bool {
        self.ci95.is_some_and(|[lo, hi]| lo > 0.0 || hi < 0.0)
    }
}

/// The 0.975 quantile of Student's t with `dof` degrees of freedom.
pub fn t_quantile_975(dof: usize) -> f64 {
    StudentsT::new(0.0, 1.0, dof as f64)
        .expect("positive degrees of freedom")
        .inverse_cdf(0.975)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        // Standard two-sided 95% critical values.
        for (dof, t) in [
            (1, 12.7062),
            (2, 4.3027),
            (4, 2.7764),
            (9, 2.2622),
            (30, 2.0423),
        ] {
            assert!((t_quantile_975(dof) - t).abs() < 1e-4, "dof {dof}");
        }
    }

    #[test]
    fn summary_of_three_values() {
        let s = SeedSummary::of(&[0.6, 0.7, 0.8]);
        assert!((s.mean - 0.7).abs() < 1e-12);
        assert!((s.std.unwrap() - 0.1).abs() < 1e-12);
        let [lo, hi] = s.ci95.unwrap();
        let half = 4.302652729911275 * 0.1 / 3f64.sqrt();
        assert!((lo - (0.7 - half)).abs() < 1e-9 && (hi - (0.7 + half)).abs() < 1e-9);
        assert!(s.excludes_zero());
        assert!(!SeedSummary::of(&[-0.1, 0.1, 0.05]).excludes_zero());
    }

    #[test]
    fn one_value_has_no_spread() {
        let s = SeedSummary::of(&[0.5]);
        assert_eq!((s.mean, s.std, s.ci95), (0.5, None, None));
        assert!(!s.excludes_zero());
    }
}
