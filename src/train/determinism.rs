//! Reproducibility switches: libtorch's generators and its deterministic-algorithms mode.
//!
//! On CPU, seeding is enough for bit-identical runs (the kernels we use are deterministic
//! for a fixed thread count). On CUDA, `train.deterministic` additionally selects
//! deterministic kernels (index_add, scatter and embedding_bag backward, cuDNN convolutions)
//! and a fixed cuBLAS workspace; see README "Reproducibility".

/// cuBLAS is only deterministic with a fixed workspace, read when its handle is created.
const CUBLAS_WORKSPACE: &str = "CUBLAS_WORKSPACE_CONFIG";

/// Turns libtorch's deterministic algorithms on or off (cuDNN benchmarking stays off).
/// Call before the first CUDA operation.
pub fn set_deterministic(on: bool) {
    if on && std::env::var_os(CUBLAS_WORKSPACE).is_none() {
        // Before any CUDA work and before the loader's threads start.
        std::env::set_var(CUBLAS_WORKSPACE, ":4096:8");
    }
    crate::torch_ext::set_deterministic_algorithms(on);
}

/// Whether libtorch's deterministic algorithms are on.
pub fn deterministic() -> bool {
    crate::torch_ext::deterministic_algorithms()
}

/// One 64-bit seed per (run seed, stream): initialization and each iteration draw from
/// their own stream, so a resumed run draws what an uninterrupted one would.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    // SplitMix64 finalizer over the pair: nearby seeds give unrelated streams.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED69))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seeds libtorch's CPU generator and every CUDA generator.
pub fn seed_torch(seed: u64) {
    // manual_seed takes an i64; dropping the top bit keeps it non-negative.
    tch::manual_seed((seed >> 1) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_mode_round_trips() {
        set_deterministic(true);
        assert!(deterministic());
        set_deterministic(false);
        assert!(!deterministic());
    }

    #[test]
    fn seeding_fixes_libtorch_draws() {
        seed_torch(stream_seed(7, 0));
        let a = tch::Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
        seed_torch(stream_seed(7, 0));
        let b = tch::Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
        assert!(a.equal(&b));
        assert_ne!(stream_seed(7, 0), stream_seed(8, 0));
        assert_ne!(stream_seed(7, 0), stream_seed(7, 1));
    }
}
