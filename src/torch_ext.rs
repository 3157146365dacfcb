//! libtorch calls that tch does not wrap, through the C++ shim `src/torch_ext.cpp`
//! (compiled by build.rs against the same libtorch headers).

use std::ffi::c_void;

extern "C" {
    fn lbwnet_set_deterministic(on: i32);
    fn lbwnet_deterministic_algorithms() -> i32;
    fn lbwnet_grad_enabled() -> i32;
    fn lbwnet_channels_last(tensor: *const c_void) -> *mut c_void;
    fn lbwnet_straight_through(weight: *const c_void, quantized: *const c_void) -> *mut c_void;
    fn lbwnet_set_grad(var: *mut c_void, grad: *const c_void) -> i32;
    fn lbwnet_op_counter_start(record_names: i32) -> u64;
    fn lbwnet_op_counter_stop(handle: u64) -> i64;
    fn lbwnet_op_names(out: *mut std::ffi::c_char, len: i64) -> i64;
    fn lbwnet_cpu_capability(out: *mut std::ffi::c_char, len: i32) -> i32;
    fn lbwnet_allow_tf32_cudnn() -> i32;
    fn lbwnet_allow_tf32_cublas() -> i32;
    fn lbwnet_set_tf32(cudnn: i32, cublas: i32) -> i32;
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

/// `xs` in channels-last (NHWC) memory order, the same values and shape: oneDNN's CPU
/// convolutions run faster on it (measured in `src/nn/backbones/mod.rs`). Tensors
/// libtorch cannot reorder (not 4-d) come back unchanged.
pub fn channels_last(xs: &tch::Tensor) -> tch::Tensor {
    // SAFETY: the shim only reads `xs` and returns a new tensor that we own, or null.
    let ptr = unsafe { lbwnet_channels_last(xs.as_ptr().cast()) };
    if ptr.is_null() {
        xs.shallow_clone()
    } else {
        // SAFETY: a fresh heap tensor from the shim; tch frees it on drop.
        unsafe { tch::Tensor::from_ptr(ptr.cast()) }
    }
}

/// `quantized` in the forward, its gradient handed to `weight` unchanged in the backward
/// (a libtorch autograd function: no temporaries, the value is `quantized` bit for bit).
/// Both must have the same shape.
pub fn straight_through(weight: &tch::Tensor, quantized: &tch::Tensor) -> tch::Tensor {
    assert_eq!(weight.size(), quantized.size(), "straight-through shapes");
    // SAFETY: the shim only reads both tensors and returns a new tensor that we own.
    let ptr = unsafe { lbwnet_straight_through(weight.as_ptr().cast(), quantized.as_ptr().cast()) };
    assert!(
        !ptr.is_null(),
        "libtorch refused the straight-through function"
    );
    // SAFETY: a fresh heap tensor from the shim; tch frees it on drop.
    unsafe { tch::Tensor::from_ptr(ptr.cast()) }
}

/// Makes `grad` the gradient of `var` (same shape, dtype and device): autograd then
/// accumulates into it in place, so `grad` may be a view of a larger buffer.
pub fn set_grad(var: &tch::Tensor, grad: &tch::Tensor) {
    assert_eq!(var.size(), grad.size(), "gradient shape");
    // SAFETY: the shim assigns the gradient slot of the tensor `var` points to; both
    // pointers are live tensors for the duration of the call.
    let ok = unsafe { lbwnet_set_grad(var.as_ptr() as *mut c_void, grad.as_ptr().cast()) };
    assert!(ok != 0, "libtorch refused to set a gradient");
}

/// `t / divisor` with IEEE division on every device. On CUDA, ATen turns a division by a
/// host scalar into a multiplication by its reciprocal, which is up to an ulp off the
/// CPU's quotient; dividing by a 0-d tensor on `t`'s device divides exactly. Use it wherever
/// the quotient is rounded, floored, ceiled or compared.
pub fn divide(t: &tch::Tensor, divisor: f64) -> tch::Tensor {
    t / tch::Tensor::scalar_tensor(divisor, (t.kind(), t.device()))
}

/// How many top-level ATen operations `f` dispatches on this thread (operations that other
/// operations call are not counted): a device-independent count of kernel launches.
pub fn count_ops<R>(f: impl FnOnce() -> R) -> (R, i64) {
    // SAFETY: registers a thread-local RecordFunction callback, removed right below.
    let handle = unsafe { lbwnet_op_counter_start(0) };
    let result = f();
    // SAFETY: `handle` came from the start call above on this thread.
    let count = unsafe { lbwnet_op_counter_stop(handle) };
    (result, count)
}

/// One ATen operation that [`record_ops`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOp {
    /// The operator's name, e.g. `aten::add`.
    pub name: String,
    /// 0 for an operation `f` called itself, 1 for one that such an operation called, ...
    pub depth: usize,
}

/// Every ATen operation `f` dispatches on this thread, nested ones included, in order: the
/// operations at depth 0 are the ones [`count_ops`] counts.
pub fn record_ops<R>(f: impl FnOnce() -> R) -> (R, Vec<RecordedOp>) {
    // SAFETY: registers a thread-local RecordFunction callback, removed right below.
    let handle = unsafe { lbwnet_op_counter_start(1) };
    let result = f();
    // SAFETY: `handle` came from the start call above on this thread.
    unsafe { lbwnet_op_counter_stop(handle) };
    // SAFETY: a null buffer of length 0 only asks for the length.
    let len = unsafe { lbwnet_op_names(std::ptr::null_mut(), 0) };
    let mut buffer = vec![0 as std::ffi::c_char; len as usize + 1];
    // SAFETY: the shim writes at most `buffer.len()` bytes, NUL-terminated.
    unsafe { lbwnet_op_names(buffer.as_mut_ptr(), buffer.len() as i64) };
    // SAFETY: NUL-terminated by the shim, within the buffer.
    let text = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy();
    let ops = text
        .lines()
        .map(|line| {
            let (depth, name) = line.split_once(' ').expect("a recorded op line");
            RecordedOp {
                name: name.to_string(),
                depth: depth.parse().expect("a recorded op depth"),
            }
        })
        .collect();
    (result, ops)
}

/// The vector instruction set ATen's CPU kernels dispatch to (`at::get_cpu_capability`:
/// `DEFAULT`, `AVX2`, `AVX512`, ...).
pub fn cpu_capability() -> String {
    let mut buffer = [0 as std::ffi::c_char; 64];
    // SAFETY: the shim writes at most `buffer.len()` bytes, NUL-terminated.
    unsafe { lbwnet_cpu_capability(buffer.as_mut_ptr(), buffer.len() as i32) };
    // SAFETY: NUL-terminated by the shim, within the buffer.
    unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether libtorch lets cuDNN convolutions (first) and cuBLAS matmuls (second) use TF32.
pub fn tf32_allowed() -> (bool, bool) {
    // SAFETY: getters on libtorch's global context.
    unsafe {
        (
            lbwnet_allow_tf32_cudnn() != 0,
            lbwnet_allow_tf32_cublas() != 0,
        )
    }
}

/// Sets whether libtorch lets cuDNN convolutions (and RNNs) and cuBLAS matmuls use TF32
/// (`torch.backends.cudnn.allow_tf32`, `torch.backends.cuda.matmul.allow_tf32`): process-wide
/// flags, read by each CUDA kernel launch; no effect on CPU work.
pub fn set_tf32_allowed(cudnn: bool, cublas: bool) {
    // SAFETY: plain setters on libtorch's global context; the shim catches exceptions.
    let ok = unsafe { lbwnet_set_tf32(i32::from(cudnn), i32::from(cublas)) };
    assert!(ok != 0, "libtorch refused to set its TF32 flags");
}

#[cfg(test)]
mod tests {
    #[test]
    fn grad_mode_follows_no_grad() {
        assert!(super::grad_enabled());
        assert!(!tch::no_grad(super::grad_enabled));
        assert!(super::grad_enabled());
    }

    #[test]
    fn channels_last_keeps_values_and_reorders_memory() {
        let xs = tch::Tensor::arange(2 * 3 * 4 * 5, (tch::Kind::Float, tch::Device::Cpu))
            .view([2, 3, 4, 5]);
        let nhwc = super::channels_last(&xs);
        assert_eq!(nhwc.size(), xs.size());
        assert!(nhwc.equal(&xs));
        // NHWC: channels vary fastest.
        assert_eq!(nhwc.stride(), vec![60, 1, 15, 3]);
        let flat = super::channels_last(&xs.view([-1]));
        assert_eq!(flat.stride(), vec![1]);
    }

    #[test]
    fn straight_through_forwards_quantized_and_passes_the_gradient() {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        let w = tch::Tensor::randn([3, 4], opts).set_requires_grad(true);
        let q = tch::Tensor::randn([3, 4], opts);
        let out = super::straight_through(&w, &q);
        assert!(out.requires_grad() && out.detach().equal(&q));
        let upstream = tch::Tensor::randn([3, 4], opts);
        (&out * &upstream).sum(tch::Kind::Float).backward();
        assert!(w.grad().equal(&upstream));
        assert!(!q.grad().defined());
    }

    #[test]
    fn divide_is_exact_and_count_ops_sees_only_top_level_ops() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 10.0, 0.3]);
        let (q, ops) = super::count_ops(|| super::divide(&t, 7.0));
        assert_eq!(
            Vec::<f32>::try_from(&q).unwrap(),
            vec![1.0 / 7.0, 2.0 / 7.0, 10.0 / 7.0, 0.3 / 7.0]
        );
        // scalar_tensor and div; their inner allocations and fills are not counted.
        assert_eq!(ops, 2);
        let ((), none) = super::count_ops(|| ());
        assert_eq!(none, 0);
        let (_, recorded) = super::record_ops(|| super::divide(&t, 7.0));
        let top: Vec<&str> = recorded
            .iter()
            .filter(|op| op.depth == 0)
            .map(|op| op.name.as_str())
            .collect();
        assert_eq!(top, ["aten::scalar_tensor", "aten::div"], "{recorded:?}");
        // A conversion copies through nested operations, which are recorded below it.
        let (_, recorded) = super::record_ops(|| t.to_kind(tch::Kind::Double));
        assert_eq!(recorded[0].name, "aten::to", "{recorded:?}");
        assert!(recorded[1..].iter().all(|op| op.depth > 0), "{recorded:?}");
        assert!(
            recorded.iter().any(|op| op.name == "aten::copy_"),
            "{recorded:?}"
        );
    }

    #[test]
    fn a_set_gradient_accumulates_in_place() {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        let w = tch::Tensor::ones([2, 3], opts).set_requires_grad(true);
        let buffer = tch::Tensor::zeros([10], opts);
        super::set_grad(&w, &buffer.narrow(0, 4, 6).view([2, 3]));
        (&w * 2.0).sum(tch::Kind::Float).backward();
        (&w * 3.0).sum(tch::Kind::Float).backward();
        let expected = [0.0f32, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0];
        assert_eq!(Vec::<f32>::try_from(&buffer).unwrap(), expected);
    }
}
