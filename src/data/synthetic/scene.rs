//! Scene composition: where objects go, how they are drawn, what lies around them, and
//! the visible box and difficult flag of each.
use super::raster::{distance, paint_background, paint_distractor, random_colour, Canvas};
use super::{Shape, SyntheticConfig};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

/// Objects with a visible side under this many pixels are difficult.
const MIN_EASY_SIDE: usize = 14;
/// Objects with less than this share of their pixels visible are difficult.
const MIN_EASY_VISIBLE: f32 = 0.4;

/// One annotated object of a rendered image: 0-based inclusive pixel box; `class` indexes
/// the configured shapes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SceneObject {
    pub class: usize,
    pub bbox: [usize; 4],
    pub truncated: bool,
    pub difficult: bool,
}

pub(super) struct Scene {
    pub rgb: Vec<u8>,
    pub objects: Vec<SceneObject>,
}

/// A draw from `[lo, hi)`; `lo` itself (no draw) when the range is empty.
fn uniform(rng: &mut ChaCha8Rng, [lo, hi]: [f32; 2]) -> f32 {
    if lo < hi {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// Where and how an object is drawn: centre, frame half-extents and rotation.
#[derive(Debug, Clone, Copy)]
struct Placement {
    class: usize,
    shape: Shape,
    cx: f32,
    cy: f32,
    half_w: f32,
    half_h: f32,
    angle: f32,
}

impl Placement {
    /// Half-extents of the rotated frame's axis-aligned box.
    fn extent(&self) -> (f32, f32) {
        let (c, s) = (self.angle.cos().abs(), self.angle.sin().abs());
        (
            c * self.half_w + s * self.half_h,
            s * self.half_w + c * self.half_h,
        )
    }

    fn bounds(&self) -> [f32; 4] {
        let (ex, ey) = self.extent();
        [self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey]
    }
}

fn box_area(b: [f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

fn intersection(a: [f32; 4], b: [f32; 4]) -> f32 {
    box_area([
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ])
}

/// A side length, log-uniform in the configured range (capped at 0.6 of the image's
/// short side).
fn object_size(rng: &mut ChaCha8Rng, spec: &SyntheticConfig) -> f32 {
    let [lo, hi] = spec.object_size;
    let max_size = hi.min(0.6 * (spec.width.min(spec.height)) as f32);
    (rng.gen_range(lo.ln()..max_size.ln())).exp()
}

/// Picks a placement that overlaps the earlier ones only moderately: some occlusion,
/// never an object mostly hidden by a later one.
fn place_object(
    rng: &mut ChaCha8Rng,
    spec: &SyntheticConfig,
    earlier: &[Placement],
) -> Option<Placement> {
    let (width, height) = (spec.width as f32, spec.height as f32);
    for _ in 0..30 {
        let class = rng.gen_range(0..spec.shapes.len());
        let shape = spec.shapes[class];
        let roll: f32 = rng.gen();
        let (tiny, truncated) = (roll < 0.06, (0.06..0.12).contains(&roll));
        let size = if tiny {
            rng.gen_range(8.0..13.0)
        } else {
            object_size(rng, spec)
        };
        let aspect = rng.gen_range(0.8f32.ln()..1.25f32.ln()).exp();
        let turn = shape.max_rotation();
        let angle = rng.gen_range(-turn..turn);
        let mut p = Placement {
            class,
            shape,
            cx: 0.0,
            cy: 0.0,
            half_w: size / 2.0 * aspect.sqrt(),
            half_h: size / 2.0 / aspect.sqrt(),
            angle,
        };
        let (ex, ey) = p.extent();
        if 2.0 * ex >= width || 2.0 * ey >= height {
            continue;
        }
        p.cx = rng.gen_range(ex..width - ex);
        p.cy = rng.gen_range(ey..height - ey);
        if truncated {
            // Push the object across one border until 50-80% of its frame is outside.
            let outside = rng.gen_range(0.5..0.8);
            match rng.gen_range(0..4) {
                0 => p.cx = ex - 2.0 * ex * outside,
                1 => p.cx = width - ex + 2.0 * ex * outside,
                2 => p.cy = ey - 2.0 * ey * outside,
                _ => p.cy = height - ey + 2.0 * ey * outside,
            }
        }
        let b = p.bounds();
        let acceptable = earlier.iter().all(|q| {
            let qb = q.bounds();
            let inter = intersection(b, qb);
            inter <= 0.3 * box_area(qb) && inter <= 0.3 * box_area(b)
        });
        if acceptable {
            return Some(p);
        }
    }
    None
}

/// How much of an object was drawn: pixels at least half covered, in and out of the image.
struct Coverage {
    full_pixels: usize,
    /// Some of its pixels fell outside the image.
    truncated: bool,
}

/// Draws one object with 4x4 supersampled coverage, a solid colour in contrast with
/// what lies under it, and a mild shading gradient.
fn draw_object(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    p: &Placement,
    owner: u16,
    min_contrast: f32,
) -> Coverage {
    let b = p.bounds();
    let under = canvas.mean_colour(b[0], b[1], b[2], b[3]);
    let colour = (0..40)
        .map(|_| random_colour(rng, 0.0, 255.0))
        .find(|c| distance(*c, under) >= min_contrast)
        .unwrap_or_else(|| under.map(|v| if v > 127.0 { 20.0 } else { 235.0 }));
    let shade_angle = rng.gen_range(-PI..PI);
    let shade_strength = rng.gen_range(0.0..0.15);
    rasterize(
        canvas,
        p,
        colour,
        (shade_angle, shade_strength),
        owner,
        None,
    )
}

/// A piece of a shape that is no object: the part of a random shape of the set on one
/// side of a line through it (a half-star, a clipped ring, a corner of a hexagon), in a
/// random colour, under the objects.
fn paint_part_distractor(canvas: &mut Canvas, rng: &mut ChaCha8Rng, spec: &SyntheticConfig) {
    let shape = spec.shapes[rng.gen_range(0..spec.shapes.len())];
    let size = object_size(rng, spec);
    let aspect = rng.gen_range(0.8f32.ln()..1.25f32.ln()).exp();
    let p = Placement {
        class: 0,
        shape,
        cx: rng.gen_range(0.0..spec.width as f32),
        cy: rng.gen_range(0.0..spec.height as f32),
        half_w: size / 2.0 * aspect.sqrt(),
        half_h: size / 2.0 / aspect.sqrt(),
        angle: rng.gen_range(-PI..PI),
    };
    let colour = random_colour(rng, 0.0, 255.0);
    let normal = rng.gen_range(-PI..PI);
    // Keeps 30-65% of the frame's width along the normal.
    let offset = rng.gen_range(-0.4..0.3);
    rasterize(
        canvas,
        &p,
        colour,
        (0.0, 0.0),
        0,
        Some(([normal.cos(), normal.sin()], offset)),
    );
}

/// Rasterizes `p` with 4x4 supersampled coverage in `colour`, lit by `(angle, strength)`;
/// `cut` = (n, t) keeps only the frame points with `n . (u, v) <= t`.
fn rasterize(
    canvas: &mut Canvas,
    p: &Placement,
    colour: [f32; 3],
    (shade_angle, shade_strength): (f32, f32),
    owner: u16,
    cut: Option<([f32; 2], f32)>,
) -> Coverage {
    const SUB: usize = 4;
    let b = p.bounds();
    let polygon = p.shape.polygon();
    let inside = |u: f32, v: f32| {
        p.shape.contains(&polygon, u, v) && cut.is_none_or(|([nu, nv], t)| nu * u + nv * v <= t)
    };
    let (cos, sin) = (p.angle.cos(), p.angle.sin());
    let radius = p.half_w.max(p.half_h);
    // A pixel centre further than this outside the frame (in frame units) cannot be hit.
    let margin_u = 0.75 / p.half_w;
    let margin_v = 0.75 / p.half_h;
    let local = |x: f32, y: f32| {
        let (dx, dy) = (x - p.cx, y - p.cy);
        (
            (cos * dx + sin * dy) / p.half_w,
            (-sin * dx + cos * dy) / p.half_h,
        )
    };
    let mut full_pixels = 0;
    let mut truncated = false;
    let x_range = (b[0].floor() as i64)..=(b[2].ceil() as i64);
    for y in (b[1].floor() as i64)..=(b[3].ceil() as i64) {
        for x in x_range.clone() {
            let (uc, vc) = local(x as f32 + 0.5, y as f32 + 0.5);
            if uc.abs() > 1.0 + margin_u || vc.abs() > 1.0 + margin_v {
                continue;
            }
            let mut hits = 0;
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let (u, v) = local(
                        x as f32 + (sx as f32 + 0.5) / SUB as f32,
                        y as f32 + (sy as f32 + 0.5) / SUB as f32,
                    );
                    hits += usize::from(inside(u, v));
                }
            }
            if hits == 0 {
                continue;
            }
            let coverage = hits as f32 / (SUB * SUB) as f32;
            let in_image =
                x >= 0 && y >= 0 && (x as usize) < canvas.width && (y as usize) < canvas.height;
            if coverage >= 0.5 {
                full_pixels += 1;
                truncated |= !in_image;
            }
            if in_image {
                let dx = x as f32 + 0.5 - p.cx;
                let dy = y as f32 + 0.5 - p.cy;
                let light = 1.0
                    + shade_strength * (dx * shade_angle.cos() + dy * shade_angle.sin()) / radius;
                canvas.blend(
                    x as usize,
                    y as usize,
                    coverage,
                    colour.map(|c| c * light),
                    owner,
                );
            }
        }
    }
    Coverage {
        full_pixels,
        truncated,
    }
}

/// Renders one image: background, distractors under the objects, objects, occasional
/// strokes over them, sensor noise; then reads each object's visible extent.
///
/// A knob left at its default draws nothing from `rng`, so the default set is the same
/// whatever knobs exist.
pub(super) fn render_scene(rng: &mut ChaCha8Rng, spec: &SyntheticConfig) -> Scene {
    let (width, height) = (spec.width as usize, spec.height as usize);
    let mut canvas = Canvas::new(width, height);
    paint_background(&mut canvas, rng);
    // i32 draws, as the generator has always made them.
    let [lo, hi] = spec.distractors.map(|n| n as i32);
    let distractors = rng.gen_range(lo..=hi);
    let over: Vec<bool> = (0..distractors).map(|_| rng.gen_bool(0.25)).collect();
    for _ in over.iter().filter(|o| !**o) {
        paint_distractor(&mut canvas, rng);
    }
    if spec.part_distractors[1] > 0 {
        let [lo, hi] = spec.part_distractors.map(|n| n as i32);
        for _ in 0..rng.gen_range(lo..=hi) {
            paint_part_distractor(&mut canvas, rng, spec);
        }
    }
    let [lo, hi] = spec.objects.map(|n| n as i32);
    let wanted = rng.gen_range(lo..=hi);
    let mut placements: Vec<Placement> = Vec::new();
    for _ in 0..wanted {
        if let Some(p) = place_object(rng, spec, &placements) {
            placements.push(p);
        }
    }
    let coverages: Vec<Coverage> = placements
        .iter()
        .enumerate()
        .map(|(k, p)| draw_object(&mut canvas, rng, p, k as u16 + 1, spec.min_contrast))
        .collect();
    for _ in over.iter().filter(|o| **o) {
        paint_distractor(&mut canvas, rng);
    }
    if spec.blur[1] > 0.0 {
        let sigma = uniform(rng, spec.blur);
        canvas.blur(sigma);
    }
    let noise = uniform(rng, spec.noise);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for px in &canvas.pixels {
        for &v in px {
            // Sum of two uniforms: a cheap bell-shaped noise.
            let n = (rng.gen::<f32>() + rng.gen::<f32>() - 1.0) * noise;
            rgb.push((v + n).round().clamp(0.0, 255.0) as u8);
        }
    }

    let mut visible = vec![(usize::MAX, usize::MAX, 0usize, 0usize, 0usize); placements.len()];
    for (k, &owner) in canvas.owner.iter().enumerate() {
        if owner == 0 {
            continue;
        }
        let (x, y) = (k % width, k / width);
        let v = &mut visible[owner as usize - 1];
        *v = (v.0.min(x), v.1.min(y), v.2.max(x), v.3.max(y), v.4 + 1);
    }
    let objects = placements
        .iter()
        .zip(&coverages)
        .zip(&visible)
        .filter(|(_, v)| v.4 > 0)
        .map(|((p, cov), &(x0, y0, x1, y1, count))| {
            let short_side = (x1 - x0 + 1).min(y1 - y0 + 1);
            let visible_share = count as f32 / cov.full_pixels.max(1) as f32;
            SceneObject {
                class: p.class,
                bbox: [x0, y0, x1, y1],
                truncated: cov.truncated,
                difficult: short_side < MIN_EASY_SIDE || visible_share < MIN_EASY_VISIBLE,
            }
        })
        .collect();
    Scene { rgb, objects }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scenes(spec: &SyntheticConfig, count: u64) -> Vec<Scene> {
        (0..count)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                rng.set_stream(i);
                render_scene(&mut rng, spec)
            })
            .collect()
    }

    #[test]
    fn scenes_have_sensible_objects() {
        let mut total = 0;
        let mut difficult = 0;
        let spec = SyntheticConfig::default();
        for scene in scenes(&spec, 40) {
            assert_eq!(scene.rgb.len(), 320 * 240 * 3);
            assert!(!scene.objects.is_empty() && scene.objects.len() <= 4);
            for o in &scene.objects {
                assert!(o.bbox[0] <= o.bbox[2] && o.bbox[2] < 320 && o.bbox[3] < 240);
                let side = (o.bbox[2] - o.bbox[0] + 1).max(o.bbox[3] - o.bbox[1] + 1);
                assert!(o.difficult || (20..=160).contains(&side), "{o:?}");
                difficult += usize::from(o.difficult);
            }
            total += scene.objects.len();
        }
        assert!(difficult * 4 < total, "{difficult} of {total} difficult");
    }

    #[test]
    fn harder_knobs_give_more_smaller_objects_of_every_shape() {
        let spec = SyntheticConfig {
            shapes: super::super::ALL_SHAPES.to_vec(),
            objects: [4, 9],
            object_size: [16.0, 48.0],
            part_distractors: [2, 4],
            blur: [0.3, 1.0],
            noise: [4.0, 12.0],
            min_contrast: 70.0,
            ..SyntheticConfig::default()
        };
        let all = scenes(&spec, 30);
        let objects: Vec<&SceneObject> = all.iter().flat_map(|s| &s.objects).collect();
        assert!(objects.len() >= 30 * 4 * 3 / 4, "{}", objects.len());
        let mut seen = vec![false; spec.shapes.len()];
        for o in &objects {
            seen[o.class] = true;
            let side = (o.bbox[2] - o.bbox[0] + 1).max(o.bbox[3] - o.bbox[1] + 1);
            assert!(side <= 70, "{o:?}");
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        // The same stream gives the same scene; knobs change it.
        assert_eq!(scenes(&spec, 2)[1].rgb, all[1].rgb);
        assert_ne!(scenes(&SyntheticConfig::default(), 2)[1].rgb, all[1].rgb);
    }
}
