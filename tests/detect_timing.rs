//! Timings of the RoI pooling and NMS at Faster R-CNN sizes. Ignored by default; run with
//! `cargo test --release --test detect_timing -- --ignored --nocapture` (CUDA if available;
//! `LBWNET_TIMING_THREADS=n` sets the ATen CPU thread count).
use lbwnet::detect::anchors::{base_anchors, grid_anchors};
use lbwnet::detect::box_coder::BoxCoder;
use lbwnet::detect::box_ops::clip_boxes_to_image;
use lbwnet::detect::nms::nms_top_k;
use lbwnet::detect::roi_align::roi_align;
use lbwnet::detect::roi_pool::roi_pool;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn device() -> Device {
    Device::cuda_if_available()
}

/// CPU time of all threads of this process, in ns (Linux `schedstat`): unlike wall time it
/// barely moves when other processes share the cores.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Median wall time and median CPU time (all threads) of `runs` calls after one warm-up,
/// in ms.
fn median_ms(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..runs)
        .map(|_| {
            let cpu_start = process_cpu_ns().unwrap_or(0);
            let start = Instant::now();
            f();
            if let Device::Cuda(i) = device() {
                tch::Cuda::synchronize(i as i64);
            }
            let wall = start.elapsed().as_secs_f64() * 1e3;
            (
                wall,
                (process_cpu_ns().unwrap_or(0) - cpu_start) as f64 / 1e6,
            )
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[runs / 2], cpu[runs / 2])
}

/// `count` RPN-like proposals on a 600x800 image: jittered stride-16 anchors, clipped.
fn proposals(count: i64) -> Tensor {
    let anchors = grid_anchors(
        &base_anchors(&[128.0, 256.0, 512.0], &[0.5, 1.0, 2.0]),
        38,
        50,
        16,
    );
    let pick = Tensor::randperm(anchors.size()[0], (Kind::Int64, Device::Cpu)).narrow(0, 0, count);
    let anchors = anchors.index_select(0, &pick);
    let deltas = Tensor::randn([count, 4], (Kind::Float, Device::Cpu)) * 0.3;
    let boxes = BoxCoder::new([1.0; 4])
        .decode(&deltas, &anchors)
        .squeeze_dim(1);
    clip_boxes_to_image(&boxes, 600, 800)
}

#[test]
#[ignore]
fn time_roi_pooling() {
    tch::manual_seed(0);
    let features = Tensor::randn([1, 512, 38, 50], (Kind::Float, device()));
    let boxes = proposals(128).to_device(device());
    let rois = Tensor::cat(&[boxes.zeros_like().narrow(1, 0, 1), boxes], 1);
    let threads = std::env::var("LBWNET_TIMING_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    if let Some(threads) = threads {
        tch::set_num_threads(threads);
    }
    println!(
        "device {:?}, {} CPU threads, K=128 C=512 map 38x50 scale 1/16",
        device(),
        tch::get_num_threads()
    );
    for (aligned, ratio) in [(false, 2), (true, 2), (false, 0)] {
        let forward = median_ms(7, || {
            let _ = roi_align(&features, &rois, (7, 7), 1.0 / 16.0, ratio, aligned);
        });
        let mut x = features.copy().set_requires_grad(true);
        let both = median_ms(7, || {
            x.zero_grad();
            roi_align(&x, &rois, (7, 7), 1.0 / 16.0, ratio, aligned)
                .sum(Kind::Float)
                .backward();
        });
        println!(
            "roi_align 7x7 aligned={aligned} ratio={ratio}: forward {:.2} ms (cpu {:.2}), forward+backward {:.2} ms (cpu {:.2})",
            forward.0, forward.1, both.0, both.1
        );
    }
    let forward = median_ms(7, || {
        let _ = roi_pool(&features, &rois, (7, 7), 1.0 / 16.0);
    });
    let mut x = features.copy().set_requires_grad(true);
    let both = median_ms(7, || {
        x.zero_grad();
        roi_pool(&x, &rois, (7, 7), 1.0 / 16.0)
            .sum(Kind::Float)
            .backward();
    });
    println!(
        "roi_pool 7x7: forward {:.2} ms (cpu {:.2}), forward+backward {:.2} ms (cpu {:.2})",
        forward.0, forward.1, both.0, both.1
    );
}

#[test]
#[ignore]
fn time_nms() {
    tch::manual_seed(0);
    for (count, cap) in [(12000, Some(2000)), (12000, None), (6000, Some(300))] {
        let boxes = proposals(count).to_device(device());
        let scores = Tensor::rand([count], (Kind::Float, device()));
        let mut kept = 0;
        let (wall, cpu) = median_ms(9, || kept = nms_top_k(&boxes, &scores, 0.7, cap).size()[0]);
        println!("nms {count} boxes, cap {cap:?}: {kept} kept in {wall:.2} ms (cpu {cpu:.2})");
    }
}
