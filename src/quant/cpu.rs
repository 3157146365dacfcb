//! Direct access to contiguous CPU tensors, for the quantizer kernels that would take
//! torch's element-wise ops several passes over memory, and the block-parallel driver
//! they run on (torch's intra-op thread count, so `set_num_threads` governs both).
use std::cell::Cell;
use std::ops::Range;
use tch::kind::Element;
use tch::{Device, Tensor};

thread_local! {
    static TENSOR_OPS_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether `t` goes through the fused CPU kernels: a CPU tensor, unless
/// [`with_tensor_ops`] asked for the device-generic path.
pub(crate) fn uses_cpu_kernels(t: &Tensor) -> bool {
    t.device() == Device::Cpu && !TENSOR_OPS_ONLY.with(Cell::get)
}

/// Runs `f` with the quantizers on their device-generic tensor-op path (the one CUDA
/// takes) also for CPU tensors, so that path is tested, and counted, without a GPU.
pub fn with_tensor_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            TENSOR_OPS_ONLY.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(TENSOR_OPS_ONLY.with(|flag| flag.replace(true)));
    f()
}

/// Elements per parallel task: large enough to amortize a thread start, and fixed so
/// block-wise reductions give the same result for any thread count.
const BLOCK: usize = 1 << 16;

/// 2^20 weights per thread at least: measured on the default model at 2 threads, a 6-bit
/// step took 1.40x the float one with a thread per block and 1.07x at 1 thread.
const MIN_BLOCKS_PER_THREAD: usize = 16;

fn check_layout<T: Element>(t: &Tensor) {
    assert!(
        t.device() == Device::Cpu && t.kind() == T::KIND && t.is_contiguous(),
        "quantizer kernel expects a contiguous CPU {:?} tensor, got {:?} on {:?}",
        T::KIND,
        t.kind(),
        t.device()
    );
}

/// The elements of `t`, a contiguous CPU tensor of `T`'s kind.
pub(crate) fn slice<T: Element>(t: &Tensor) -> &[T] {
    check_layout::<T>(t);
    let len = t.numel();
    if len == 0 {
        return &[];
    }
    // SAFETY: layout checked above; the storage holds `len` elements of T from data_ptr
    // and outlives the borrow of `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, len) }
}

/// The elements of `t` for writing; `t` must own its storage (e.g. fresh from `empty`).
pub(crate) fn slice_mut<T: Element>(t: &mut Tensor) -> &mut [T] {
    check_layout::<T>(t);
    let len = t.numel();
    if len == 0 {
        return &mut [];
    }
    // SAFETY: as in `slice`; the exclusive borrow of `t` stands for its storage.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, len) }
}

/// Runs `f` on every item, spreading contiguous runs of items over torch's intra-op
/// threads; results come back in item order.
fn run_parallel<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync) -> Vec<R> {
    // Each thread gets at least MIN_BLOCKS_PER_THREAD blocks: below that, starting threads
    // (which also compete with libtorch's spinning OpenMP workers) costs more than it saves.
    let threads = (tch::get_num_threads().max(1) as usize).min(items.len() / MIN_BLOCKS_PER_THREAD);
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut groups: Vec<Vec<I>> = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let group: Vec<I> = rest.by_ref().take(per_thread).collect();
        if group.is_empty() {
            break;
        }
        groups.push(group);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| scope.spawn(move || group.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Runs `kernel` compiled with AVX2 when the CPU has it (the crate builds for baseline
/// x86-64, whose SSE2 vectors are half as wide), else as is. Kernels written as plain
/// loops with selects vectorize either way.
#[inline(always)]
pub(crate) fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn with_avx2<R>(kernel: impl FnOnce() -> R) -> R {
            kernel()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { with_avx2(kernel) };
        }
    }
    kernel()
}

/// `f` over the [`BLOCK`]-sized index ranges of `0..len`, in parallel, in block order.
pub(crate) fn map_blocks<R: Send>(len: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    let blocks = (0..len)
        .step_by(BLOCK)
        .map(|start| start..(start + BLOCK).min(len))
        .collect();
    run_parallel(blocks, |range| vectorized(|| f(range)))
}

/// `f(input block, output block)` over matching [`BLOCK`]-sized blocks, in parallel.
pub(crate) fn zip_blocks<A: Sync, B: Send>(
    input: &[A],
    output: &mut [B],
    f: impl Fn(&[A], &mut [B]) + Sync,
) {
    assert_eq!(
        input.len(),
        output.len(),
        "kernel input and output lengths differ"
    );
    let pairs: Vec<(&[A], &mut [B])> = input.chunks(BLOCK).zip(output.chunks_mut(BLOCK)).collect();
    run_parallel(pairs, |(src, dst)| vectorized(|| f(src, dst)));
}

/// Finite nonzero |w| in ascending order. Positive floats order like their bit patterns,
/// so an LSD radix sort on those (3 passes of 11 bits) does it in O(N).
pub(crate) fn sorted_magnitudes(w: &[f32]) -> Vec<f32> {
    let mut keys: Vec<u32> = w
        .iter()
        .map(|x| x.abs().to_bits())
        .filter(|&bits| bits != 0 && bits < f32::INFINITY.to_bits())
        .collect();
    radix_sort(&mut keys);
    keys.into_iter().map(f32::from_bits).collect()
}

fn radix_sort(keys: &mut Vec<u32>) {
    const DIGIT_BITS: u32 = 11;
    const RADIX: usize = 1 << DIGIT_BITS;
    let digit = |key: u32, pass: usize| {
        ((key >> (DIGIT_BITS as usize * pass)) & (RADIX as u32 - 1)) as usize
    };
    let mut counts = vec![[0usize; RADIX]; 3];
    for &key in keys.iter() {
        for (pass, count) in counts.iter_mut().enumerate() {
            count[digit(key, pass)] += 1;
        }
    }
    let mut scratch = vec![0u32; keys.len()];
    for (pass, count) in counts.iter().enumerate() {
        if count.contains(&keys.len()) {
            continue; // every key has the same digit here
        }
        let mut offsets = [0usize; RADIX];
        let mut total = 0;
        for (offset, &c) in offsets.iter_mut().zip(count.iter()) {
            *offset = total;
            total += c;
        }
        for &key in keys.iter() {
            let d = digit(key, pass);
            scratch[offsets[d]] = key;
            offsets[d] += 1;
        }
        std::mem::swap(keys, &mut scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_orders_magnitudes() {
        let w: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919 % 10_007) as f32 - 5000.0) * 1e-3)
            .collect();
        let mut expected: Vec<f32> = w.iter().map(|x| x.abs()).filter(|&x| x > 0.0).collect();
        expected.sort_by(f32::total_cmp);
        assert_eq!(sorted_magnitudes(&w), expected);
        let with_specials = [f32::NAN, f32::INFINITY, -0.0, 3.0, -1e-40, 2.0];
        assert_eq!(sorted_magnitudes(&with_specials), vec![1e-40, 2.0, 3.0]);
    }
}
