//! Benchmarks, apart from the code they measure (as torchvision's reference scripts and
//! detectron2's `tools/benchmark.py` are): each file measures one thing, against a
//! baseline run in the same process (a memory copy, the float model, the training-time
//! model), as medians of repeated runs. `lbwnet bench` parses arguments and calls them.
pub mod breakdown;
pub mod detect;
pub mod inference;
pub mod loader;
pub mod onnxruntime;
pub mod quantizers;
pub mod train_step;

use std::time::Instant;
use tch::Device;

/// Peak resident set size of this process in MiB (Linux reports KiB).
pub fn peak_rss_mib() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
        // SAFETY: initialized by the successful call.
        ok.then(|| unsafe { usage.assume_init() }.ru_maxrss as f64 / 1024.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The median (the mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Waits for the device's queued work (a no-op on the CPU), so wall time covers it.
pub(crate) fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `f()` and its wall time in ms, the device's work included.
pub(crate) fn elapsed_ms<T>(device: Device, f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    sync(device);
    (out, start.elapsed().as_secs_f64() * 1e3)
}
