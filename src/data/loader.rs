//! The detector's data loader: images decoded, resized, flipped and normalized on
//! background threads into bounded queues, yielded in position order.
//!
//! Position `p` of a loader maps to an image and a flip decision that depend only on
//! `(seed, p)`: epoch `p / n` visits the images in a permutation seeded by
//! `(seed, epoch)`, and the flip comes from a hash of `(seed, p)`. A training run resumed
//! at iteration `p` therefore sees exactly the data it would have seen without stopping.
use super::transforms::{
    decode_rgb_annotated, flip_boxes, resize_normalize_into, resize_scale, scaled_size,
    voc_to_pixel_box,
};
use super::voc::VocDataset;
use crate::config::{DataConfig, Normalization};
use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// One image ready for the detector.
#[derive(Debug)]
pub struct Sample {
    /// Position in the data set's image list (`Dataset::ids`).
    pub index: usize,
    pub id: String,
    /// `[3, H, W]` f32, normalized, of the resized (and flipped) image.
    pub image: Tensor,
    /// `[K, 4]` f32 `x1, y1, x2, y2` in 0-based pixels of the resized (and flipped)
    /// image, py-faster-rcnn's convention: `x = (xml_x - 1) * scale`.
    pub boxes: Tensor,
    /// `[K]` i64: class index + 1 (0 is the background).
    pub labels: Tensor,
    /// `[K]` bool.
    pub difficult: Tensor,
    /// Resized size / original size.
    pub scale: f64,
    pub flipped: bool,
    /// Original `(width, height)`.
    pub orig_size: (u32, u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Shorter side after resizing.
    pub min_size: u32,
    /// Cap on the longer side after resizing.
    pub max_size: u32,
    /// Random horizontal flip (half of the positions).
    pub flip: bool,
    pub normalization: Normalization,
    /// Decoding threads (at least one is used).
    pub threads: usize,
    /// Bound on decoded images waiting to be taken.
    pub queue_size: usize,
    /// Training mode: difficult objects and boxes without area at training scale are
    /// dropped, and images left without objects are skipped (py-faster-rcnn's
    /// `filter_roidb`).
    pub drop_difficult: bool,
    /// Visit each epoch in a seeded permutation, endlessly when no count is given.
    pub shuffle: bool,
    pub seed: u64,
}

impl LoaderConfig {
    /// Training (`train`: shuffle, flip as configured, difficult dropped) or test (one
    /// ordered pass, no flip, every object kept) settings from the data config.
    pub fn from_data_config(data: &DataConfig, train: bool, seed: u64) -> Self {
        Self {
            min_size: data.min_size,
            max_size: data.max_size,
            flip: train && data.flip,
            normalization: data.normalization,
            threads: data.loader_threads,
            queue_size: data.queue_size,
            drop_difficult: train,
            shuffle: train,
            seed,
        }
    }
}

/// Decodes, resizes, optionally flips and normalizes image `index` of `dataset`
/// (synchronously; the [`Loader`] runs this on its threads).
pub fn load_sample(
    dataset: &VocDataset,
    index: usize,
    flip: bool,
    cfg: &LoaderConfig,
) -> Result<Sample> {
    let annotation = &dataset.annotations[index];
    let path = dataset.image_path(index);
    // In the frame whose size the annotation gives (EXIF orientation applied or not).
    let image = decode_rgb_annotated(&path, annotation.width, annotation.height)?;
    let (width, height) = image.dimensions();
    let scale = resize_scale(width, height, cfg.min_size, cfg.max_size);
    let (new_width, new_height) = scaled_size(width, height, scale);
    let kept = target_boxes(dataset, index, cfg, flip);
    let flat: Vec<f32> = kept.iter().flat_map(|(_, b)| *b).collect();
    let objects = &annotation.objects;
    let labels: Vec<i64> = kept
        .iter()
        .map(|&(k, _)| objects[k].class_index as i64 + 1)
        .collect();
    let difficult: Vec<bool> = kept.iter().map(|&(k, _)| objects[k].difficult).collect();
    let image = filled_f32_tensor(&[3, new_height as i64, new_width as i64], |out| {
        resize_normalize_into(&image, new_width, new_height, flip, cfg.normalization, out)
    })?;
    Ok(Sample {
        index,
        id: annotation.id.clone(),
        image,
        boxes: Tensor::f_from_slice(&flat)?.f_view([kept.len() as i64, 4])?,
        labels: Tensor::f_from_slice(&labels)?,
        difficult: Tensor::f_from_slice(&difficult)?,
        scale,
        flipped: flip,
        orig_size: (width, height),
    })
}

/// The objects of image `index` that reach the detector, as `(object index, box)` with
/// the box in 0-based pixels of the resized (and flipped) image. In training mode,
/// difficult objects are dropped, and so is a box left without area after resizing (the
/// detector's boxes have width `x2 - x1`, so a 1-pixel-wide VOC box, `xmin == xmax`, has
/// none): it would make its regression target infinite and the loss NaN.
fn target_boxes(
    dataset: &VocDataset,
    index: usize,
    cfg: &LoaderConfig,
    flip: bool,
) -> Vec<(usize, [f32; 4])> {
    let annotation = &dataset.annotations[index];
    let scale = resize_scale(
        annotation.width,
        annotation.height,
        cfg.min_size,
        cfg.max_size,
    );
    annotation
        .objects
        .iter()
        .enumerate()
        .filter(|(_, o)| !(cfg.drop_difficult && o.difficult))
        .map(|(k, o)| {
            let mut b = [voc_to_pixel_box(o.bbox)];
            // Flip in original pixels, then scale: py-faster-rcnn's order.
            if flip {
                flip_boxes(&mut b, annotation.width);
            }
            (k, b[0].map(|v| (v as f64 * scale) as f32))
        })
        .filter(|(_, b)| !cfg.drop_difficult || (b[2] > b[0] && b[3] > b[1]))
        .collect()
}

/// Whether image `index` has a training target either way it may be flipped.
fn has_targets(dataset: &VocDataset, index: usize, cfg: &LoaderConfig) -> bool {
    !target_boxes(dataset, index, cfg, false).is_empty()
        && (!cfg.flip || !target_boxes(dataset, index, cfg, true).is_empty())
}

/// Warns once per loader about the boxes training leaves out for having no area after
/// resizing, naming an example.
fn warn_zero_area(dataset: &VocDataset, cfg: &LoaderConfig) {
    if !cfg.drop_difficult {
        return;
    }
    let mut count = 0;
    let mut example = None;
    for (index, annotation) in dataset.annotations.iter().enumerate() {
        let kept = target_boxes(dataset, index, cfg, false);
        for (k, o) in annotation.objects.iter().enumerate() {
            if !o.difficult && !kept.iter().any(|&(j, _)| j == k) {
                count += 1;
                example.get_or_insert_with(|| {
                    let [x1, y1, x2, y2] = o.bbox;
                    format!(
                        "object {} of {} is [{x1}, {y1}, {x2}, {y2}]",
                        k + 1,
                        dataset.annotation_source(index)
                    )
                });
            }
        }
    }
    if let Some(example) = example {
        tracing::warn!(
            "{count} box(es) of split `{}` have no width or height at training scale and are left out of training (e.g. {example})",
            dataset.split
        );
    }
}

/// A new CPU f32 tensor of `shape`, written by `fill`. Unlike `Tensor::from_slice`, this
/// runs no libtorch zero-fill: that is an OpenMP parallel region per call, which costs
/// milliseconds when the cores are busy and oversubscribes them from loader threads.
fn filled_f32_tensor(shape: &[i64], fill: impl FnOnce(&mut [f32])) -> Result<Tensor> {
    let tensor = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
    let len = tensor.numel();
    // SAFETY: the tensor was just allocated, contiguous, f32 on the CPU, with `len`
    // elements, and nothing else refers to its memory while the slice lives.
    let data = unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, len) };
    fill(data);
    Ok(tensor)
}

/// Which image and flip each position gets.
struct Schedule {
    /// Images the loader visits (all, or those with objects left in training mode).
    images: Vec<usize>,
    seed: u64,
    shuffle: bool,
    flip: bool,
    /// The permutation of the last epoch asked for.
    cached: Option<(usize, Vec<usize>)>,
}

impl Schedule {
    fn plan(&mut self, position: usize) -> (usize, bool) {
        let n = self.images.len();
        let epoch = position / n;
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order = self.images.clone();
            if self.shuffle {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                rng.set_stream(epoch as u64);
                order.shuffle(&mut rng);
            }
            self.cached = Some((epoch, order));
        }
        let index = self
            .cached
            .as_ref()
            .map_or(0, |(_, order)| order[position % n]);
        let flip = self.flip && splitmix64(splitmix64(self.seed) ^ position as u64) >> 63 == 1;
        (index, flip)
    }
}

/// SplitMix64's finalizer: a well-mixed hash of one word.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Background-threaded loader; see the module docs for the position contract.
///
/// Worker `k` of `T` handles positions `start + k`, `start + k + T`, ... into its own
/// bounded queue, so taking the queues round-robin yields positions in order with no
/// reordering buffer. Dropping the loader stops the workers.
pub struct Loader {
    receivers: Vec<Receiver<Result<Sample>>>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    start: usize,
    next: usize,
    end: Option<usize>,
    epoch_len: usize,
}

impl Loader {
    /// Yields positions `start, start + 1, ...`: `count` of them, or with `None` endless
    /// epochs when shuffling and the rest of one pass when not.
    pub fn new(
        dataset: Arc<VocDataset>,
        cfg: LoaderConfig,
        start: usize,
        count: Option<usize>,
    ) -> Result<Self> {
        let images: Vec<usize> = (0..dataset.len())
            .filter(|&i| !cfg.drop_difficult || has_targets(&dataset, i, &cfg))
            .collect();
        warn_zero_area(&dataset, &cfg);
        let epoch_len = images.len();
        let end = match count {
            Some(count) => Some(start + count),
            None if cfg.shuffle => None,
            None => Some(epoch_len.max(start)),
        };
        if epoch_len == 0 && end.is_none_or(|e| e > start) {
            bail!(
                "split `{}` of {} has no images to load{}",
                dataset.split,
                dataset.root.display(),
                if cfg.drop_difficult {
                    " (none has a non-difficult object with a box of some area)"
                } else {
                    ""
                }
            );
        }
        let threads = cfg.threads.max(1);
        let capacity = cfg.queue_size.max(1).div_ceil(threads);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for k in 0..threads {
            let (tx, rx) = sync_channel(capacity);
            let schedule = Schedule {
                images: images.clone(),
                seed: cfg.seed,
                shuffle: cfg.shuffle,
                flip: cfg.flip,
                cached: None,
            };
            let job = Worker {
                dataset: dataset.clone(),
                cfg: cfg.clone(),
                schedule,
                stop: stop.clone(),
                tx,
            };
            let handle = std::thread::Builder::new()
                .name(format!("lbwnet-loader-{k}"))
                .spawn(move || job.run(start + k, threads, end))
                .context("starting a loader thread")?;
            receivers.push(rx);
            workers.push(handle);
        }
        Ok(Self {
            receivers,
            workers,
            stop,
            start,
            next: start,
            end,
            epoch_len,
        })
    }

    /// Images per epoch (positions `e * epoch_len .. (e + 1) * epoch_len` are epoch `e`).
    pub fn epoch_len(&self) -> usize {
        self.epoch_len
    }

    /// The position the next yielded sample has.
    pub fn position(&self) -> usize {
        self.next
    }
}

struct Worker {
    dataset: Arc<VocDataset>,
    cfg: LoaderConfig,
    schedule: Schedule,
    stop: Arc<AtomicBool>,
    tx: SyncSender<Result<Sample>>,
}

impl Worker {
    fn run(mut self, first: usize, stride: usize, end: Option<usize>) {
        let mut position = first;
        while end.is_none_or(|e| position < e) && !self.stop.load(Ordering::Relaxed) {
            let (index, flip) = self.schedule.plan(position);
            let item = load_sample(&self.dataset, index, flip, &self.cfg).with_context(|| {
                format!(
                    "loading position {position} (image `{}`)",
                    self.dataset.ids[index]
                )
            });
            // A send fails only once the loader is gone.
            if self.tx.send(item).is_err() {
                break;
            }
            position += stride;
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.end.is_some_and(|e| self.next >= e) || self.receivers.is_empty() {
            return None;
        }
        let k = (self.next - self.start) % self.receivers.len();
        match self.receivers[k].recv() {
            Ok(item) => {
                self.next += 1;
                Some(item)
            }
            Err(_) => {
                // Only a panicking worker hangs up early; end the iteration after saying so.
                self.receivers.clear();
                Some(Err(anyhow!(
                    "loader thread {k} stopped unexpectedly before position {}",
                    self.next
                )))
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers wakes workers blocked on a full queue.
        self.receivers.clear();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_a_permutation_per_epoch_and_depends_on_the_seed() {
        let mut s = Schedule {
            images: (0..10).collect(),
            seed: 7,
            shuffle: true,
            flip: true,
            cached: None,
        };
        let mut epoch0: Vec<usize> = (0..10).map(|p| s.plan(p).0).collect();
        let epoch1: Vec<usize> = (10..20).map(|p| s.plan(p).0).collect();
        assert_ne!(epoch0, epoch1);
        let flips = (0..200).filter(|&p| s.plan(p).1).count();
        assert!((70..130).contains(&flips), "{flips}");
        epoch0.sort();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        let mut other = Schedule {
            images: (0..10).collect(),
            seed: 8,
            shuffle: true,
            flip: true,
            cached: None,
        };
        let other0: Vec<usize> = (0..10).map(|p| other.plan(p).0).collect();
        let again: Vec<usize> = (0..10).map(|p| s.plan(p).0).collect();
        assert_ne!(other0, again);
    }
}
