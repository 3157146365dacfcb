//! libtorch calls that tch does not wrap, through the C++ shim `src/torch_ext.cpp`
//! (compiled by build.rs against the same libtorch headers).

extern "C" {
    fn lbwnet_set_deterministic(on: i32);
    fn lbwnet_deterministic_algorithms() -> i32;
    fn lbwnet_grad_enabled() -> i32;
}

/// `at::globalContext().setDeterministicAlgorithms(on, warn_only = true)`, deterministic
/// cuDNN on with it, cuDNN benchmarking off.
pub fn set_deterministic_algorithms(on: bool) {
    // SAFETY: plain setters on libtorch's global context.
    unsafe { lbwnet_set_deterministic(i32::from(on)) }
}

/// Whether libtorch's deterministic algorithms are on.
pub fn deterministic_algorithms() -> bool {
    // SAFETY: a getter on libtorch's global context.
    unsafe { lbwnet_deterministic_algorithms() != 0 }
}

/// Whether autograd records operations on this thread (false inside `tch::no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { lbwnet_grad_enabled() != 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grad_mode_follows_no_grad() {
        assert!(super::grad_enabled());
        assert!(!tch::no_grad(super::grad_enabled));
        assert!(super::grad_enabled());
    }
}
