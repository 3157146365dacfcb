//! The detector's inputs: images padded into one batch (torchvision's `ImageList`) and
//! each image's ground truth.
use tch::Tensor;

/// Ground truth of one image, in network-input coordinates.
pub struct ImageTarget {
    /// `[K, 4]` x1, y1, x2, y2.
    pub boxes: Tensor,
    /// `[K]` 1..=num_classes.
    pub labels: Tensor,
}

/// A batch of images padded to one size, with what the detector needs to undo it.
pub struct ImageBatch {
    /// `[N, 3, H, W]`, zero-padded at the bottom and right.
    pub images: Tensor,
    /// (height, width) of each image before padding.
    pub sizes: Vec<(i64, i64)>,
    /// Resize factor of each image from its original size.
    pub scales: Vec<f64>,
}

impl ImageBatch {
    pub fn new(images: &[Tensor], scales: Vec<f64>) -> Self {
        let sizes: Vec<(i64, i64)> = images
            .iter()
            .map(|im| {
                let s = im.size();
                (s[1], s[2])
            })
            .collect();
        let max_h = sizes.iter().map(|s| s.0).max().unwrap_or(0);
        let max_w = sizes.iter().map(|s| s.1).max().unwrap_or(0);
        let padded: Vec<Tensor> = images
            .iter()
            .zip(&sizes)
            .map(|(im, &(h, w))| {
                if h == max_h && w == max_w {
                    im.shallow_clone()
                } else {
                    im.constant_pad_nd([0, max_w - w, 0, max_h - h])
                }
            })
            .collect();
        Self {
            images: Tensor::stack(&padded, 0),
            sizes,
            scales,
        }
    }
}
