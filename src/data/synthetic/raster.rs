//! The pixel canvas and what is painted on it besides the objects: textured backgrounds,
//! distractor strokes, blur.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

/// RGB float canvas plus, per pixel, which object (1-based; 0 = none) shows there.
pub(super) struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[f32; 3]>,
    pub owner: Vec<u16>,
}

impl Canvas {
    pub(super) fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![[0.0; 3]; width * height],
            owner: vec![0; width * height],
        }
    }

    /// Gaussian blur of the pixels (not the owners) with standard deviation `sigma`
    /// pixels; the border is clamped.
    pub(super) fn blur(&mut self, sigma: f32) {
        if sigma <= 0.0 {
            return;
        }
        let radius = (3.0 * sigma).ceil() as i64;
        let mut kernel: Vec<f32> = (-radius..=radius)
            .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f32 = kernel.iter().sum();
        kernel.iter_mut().for_each(|k| *k /= total);
        let (w, h) = (self.width as i64, self.height as i64);
        let pass = |src: &[[f32; 3]], horizontal: bool| -> Vec<[f32; 3]> {
            let mut out = vec![[0f32; 3]; src.len()];
            for y in 0..h {
                for x in 0..w {
                    let mut acc = [0f32; 3];
                    for (k, weight) in kernel.iter().enumerate() {
                        let d = k as i64 - radius;
                        let (sx, sy) = if horizontal {
                            ((x + d).clamp(0, w - 1), y)
                        } else {
                            (x, (y + d).clamp(0, h - 1))
                        };
                        let px = src[(sy * w + sx) as usize];
                        for c in 0..3 {
                            acc[c] += weight * px[c];
                        }
                    }
                    out[(y * w + x) as usize] = acc;
                }
            }
            out
        };
        let horizontal = pass(&self.pixels, true);
        self.pixels = pass(&horizontal, false);
    }

    /// Blends `colour` over pixel (x, y) with `coverage`; a pixel at least half covered
    /// now shows `owner`.
    pub(super) fn blend(
        &mut self,
        x: usize,
        y: usize,
        coverage: f32,
        colour: [f32; 3],
        owner: u16,
    ) {
        let k = y * self.width + x;
        let px = &mut self.pixels[k];
        for c in 0..3 {
            px[c] += (colour[c] - px[c]) * coverage;
        }
        if coverage >= 0.5 {
            self.owner[k] = owner;
        }
    }

    /// Mean colour over a rectangle (clipped to the canvas).
    pub(super) fn mean_colour(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> [f32; 3] {
        let clamp_x = |v: f32| (v.max(0.0) as usize).min(self.width - 1);
        let clamp_y = |v: f32| (v.max(0.0) as usize).min(self.height - 1);
        let mut sum = [0f32; 3];
        let mut n = 0f32;
        for y in clamp_y(y0)..=clamp_y(y1) {
            for x in clamp_x(x0)..=clamp_x(x1) {
                let px = self.pixels[y * self.width + x];
                for c in 0..3 {
                    sum[c] += px[c];
                }
                n += 1.0;
            }
        }
        sum.map(|s| s / n)
    }

    /// Paints the pixels of `[x0, x1] x [y0, y1]` (clipped) for which `shade` gives a
    /// coverage and colour; pixel centres are at `x + 0.5`.
    pub(super) fn paint(
        &mut self,
        bounds: [f32; 4],
        owner: u16,
        shade: impl Fn(f32, f32) -> Option<(f32, [f32; 3])>,
    ) {
        let (xs, ys) = self.clip(bounds);
        for y in ys {
            for x in xs.clone() {
                if let Some((coverage, colour)) = shade(x as f32 + 0.5, y as f32 + 0.5) {
                    if coverage > 0.0 {
                        self.blend(x, y, coverage.min(1.0), colour, owner);
                    }
                }
            }
        }
    }

    fn clip(&self, [x0, y0, x1, y1]: [f32; 4]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let lo = |v: f32, n: usize| (v.floor().max(0.0) as usize).min(n);
        let hi = |v: f32, n: usize| ((v.ceil() + 1.0).max(0.0) as usize).min(n);
        (
            lo(x0, self.width)..hi(x1, self.width),
            lo(y0, self.height)..hi(y1, self.height),
        )
    }
}

pub(super) fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    std::array::from_fn(|c| a[c] + (b[c] - a[c]) * t)
}

pub(super) fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>().sqrt()
}

pub(super) fn random_colour(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> [f32; 3] {
    std::array::from_fn(|_| rng.gen_range(lo..hi))
}

/// Textured background: a gradient, smooth value noise, or soft stripes between two
/// related colours.
pub(super) fn paint_background(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let base = random_colour(rng, 30.0, 225.0);
    let other: [f32; 3] =
        std::array::from_fn(|c| (base[c] + rng.gen_range(-60.0..60.0)).clamp(0.0, 255.0));
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let angle = rng.gen_range(0.0..PI);
    let (dx, dy) = (angle.cos(), angle.sin());
    let texture = rng.gen_range(0..3);
    let grid_w = rng.gen_range(3..8);
    let grid_h = rng.gen_range(3..7);
    let grid: Vec<f32> = (0..(grid_w + 1) * (grid_h + 1))
        .map(|_| rng.gen::<f32>())
        .collect();
    let period = rng.gen_range(8.0..32.0);
    // Gradient coordinate: the projection on (dx, dy), spanning [0, 1] over the image.
    let (lowest, span) = ((w * dx).min(0.0), (w * dx).abs() + h * dy);
    for y in 0..canvas.height {
        for x in 0..canvas.width {
            let (fx, fy) = (x as f32, y as f32);
            let t = match texture {
                0 => (fx * dx + fy * dy - lowest) / span.max(1.0),
                1 => {
                    let gx = fx / w * grid_w as f32;
                    let gy = fy / h * grid_h as f32;
                    let (ix, iy) = (gx as usize, gy as usize);
                    let (tx, ty) = (gx - ix as f32, gy - iy as f32);
                    let at = |i: usize, j: usize| grid[j * (grid_w + 1) + i];
                    let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                    let bottom = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                    top * (1.0 - ty) + bottom * ty
                }
                _ => 0.5 + 0.5 * (2.0 * PI * (fx * dx + fy * dy) / period).sin(),
            };
            canvas.pixels[y * canvas.width + x] = lerp(base, other, t.clamp(0.0, 1.0));
        }
    }
}

/// Strokes that belong to no class: line segments, thin arcs and speckle clusters.
pub(super) fn paint_distractor(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let colour = random_colour(rng, 0.0, 255.0);
    let (cx, cy) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
    match rng.gen_range(0..3) {
        0 => {
            let length = rng.gen_range(30.0..160.0);
            let angle = rng.gen_range(0.0..PI);
            let half = rng.gen_range(0.75..2.0);
            let (ux, uy) = (angle.cos(), angle.sin());
            let (ex, ey) = (ux * length / 2.0, uy * length / 2.0);
            let bounds = [
                cx - ex.abs() - 3.0,
                cy - ey.abs() - 3.0,
                cx + ex.abs() + 3.0,
                cy + ey.abs() + 3.0,
            ];
            canvas.paint(bounds, 0, |x, y| {
                let (px, py) = (x - cx, y - cy);
                let along = (px * ux + py * uy).clamp(-length / 2.0, length / 2.0);
                let d = ((px - along * ux).powi(2) + (py - along * uy).powi(2)).sqrt();
                Some(((half + 0.5 - d).clamp(0.0, 1.0), colour))
            });
        }
        1 => {
            let radius = rng.gen_range(12.0..50.0);
            let half = rng.gen_range(0.75..1.75);
            let start = rng.gen_range(-PI..PI);
            let sweep = rng.gen_range(1.0..3.8);
            let r = radius + 3.0;
            canvas.paint([cx - r, cy - r, cx + r, cy + r], 0, |x, y| {
                let (px, py) = (x - cx, y - cy);
                let along = (py.atan2(px) - start).rem_euclid(2.0 * PI);
                if along > sweep {
                    return None;
                }
                let d = ((px * px + py * py).sqrt() - radius).abs();
                Some(((half + 0.5 - d).clamp(0.0, 1.0), colour))
            });
        }
        _ => {
            for _ in 0..rng.gen_range(8..25) {
                let (dx, dy) = (
                    cx + rng.gen_range(-25.0..25.0),
                    cy + rng.gen_range(-25.0..25.0),
                );
                let radius = rng.gen_range(1.0..2.5);
                let r = radius + 1.0;
                canvas.paint([dx - r, dy - r, dx + r, dy + r], 0, |x, y| {
                    let d = ((x - dx).powi(2) + (y - dy).powi(2)).sqrt();
                    Some(((radius + 0.5 - d).clamp(0.0, 1.0), colour))
                });
            }
        }
    }
}
