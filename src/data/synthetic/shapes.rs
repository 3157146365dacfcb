//! The shape classes' geometry in the unit frame and how far each may turn (the classes
//! themselves and their names are configuration: `config::synthetic::Shape`).
use crate::config::synthetic::Shape;
use std::f32::consts::PI;

impl Shape {
    /// Largest rotation either way, in radians: hearts stay roughly upright, the rest
    /// turn freely.
    pub fn max_rotation(self) -> f32 {
        match self {
            Shape::Heart => 0.4,
            _ => PI,
        }
    }

    /// The outline of the polygon shapes; empty for the others.
    pub fn polygon(self) -> Vec<[f32; 2]> {
        match self {
            Shape::Triangle => vec![[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]],
            Shape::Star => star(5, 0.42),
            Shape::Star6 => star(6, 0.5),
            Shape::Pentagon => regular(5),
            Shape::Hexagon => regular(6),
            Shape::Octagon => regular(8),
            _ => Vec::new(),
        }
    }

    /// Whether local point (u, v) (frame [-1, 1]^2, v pointing down) lies inside the
    /// shape; `polygon` is [`Shape::polygon`] (computed once per object).
    pub fn contains(self, polygon: &[[f32; 2]], u: f32, v: f32) -> bool {
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => u.abs() <= 1.0 && v.abs() <= 1.0,
            Shape::Cross => cross(u, v, 0.34),
            Shape::ThinCross => cross(u, v, 0.18),
            Shape::Ring => (0.3025..=1.0).contains(&(u * u + v * v)),
            Shape::ThickRing => (0.1225..=1.0).contains(&(u * u + v * v)),
            Shape::Heart => {
                // (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in +-1.139, y in [-1, 1.236]: fit it
                // to the frame, y pointing up.
                let x = 1.139 * u;
                let y = 0.118 - 1.118 * v;
                (x * x + y * y - 1.0).powi(3) <= x * x * y * y * y
            }
            Shape::Ellipse => u * u + (v / 0.6).powi(2) <= 1.0,
            Shape::RoundedSquare => {
                const R: f32 = 0.4;
                let (du, dv) = (
                    (u.abs() - (1.0 - R)).max(0.0),
                    (v.abs() - (1.0 - R)).max(0.0),
                );
                u.abs() <= 1.0 && v.abs() <= 1.0 && du * du + dv * dv <= R * R
            }
            Shape::Triangle
            | Shape::Star
            | Shape::Star6
            | Shape::Pentagon
            | Shape::Hexagon
            | Shape::Octagon => inside_polygon(polygon, u, v),
        }
    }
}

fn cross(u: f32, v: f32, half_arm: f32) -> bool {
    (u.abs() <= 1.0 && v.abs() <= half_arm) || (u.abs() <= half_arm && v.abs() <= 1.0)
}

/// A star with `points` tips on the unit circle and inner corners at `inner`, tip up.
fn star(points: usize, inner: f32) -> Vec<[f32; 2]> {
    (0..2 * points)
        .map(|k| {
            let angle = -PI / 2.0 + k as f32 * PI / points as f32;
            let r = if k % 2 == 0 { 1.0 } else { inner };
            [r * angle.cos(), r * angle.sin()]
        })
        .collect()
}

/// A regular polygon with its corners on the unit circle, one corner up.
fn regular(corners: usize) -> Vec<[f32; 2]> {
    (0..corners)
        .map(|k| {
            let angle = -PI / 2.0 + k as f32 * 2.0 * PI / corners as f32;
            [angle.cos(), angle.sin()]
        })
        .collect()
}

/// Even-odd point-in-polygon test.
fn inside_polygon(polygon: &[[f32; 2]], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let ([xi, yi], [xj, yj]) = (polygon[i], polygon[j]);
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::synthetic::ALL_SHAPES;

    /// Share of the frame the shape fills and its mask, sampled on an n x n grid.
    fn mask(shape: Shape, n: usize) -> (f32, Vec<bool>) {
        let polygon = shape.polygon();
        let mask: Vec<bool> = (0..n * n)
            .map(|k| {
                let u = -1.0 + 2.0 * ((k % n) as f32 + 0.5) / n as f32;
                let v = -1.0 + 2.0 * ((k / n) as f32 + 0.5) / n as f32;
                shape.contains(&polygon, u, v)
            })
            .collect();
        let fill = mask.iter().filter(|m| **m).count() as f32 / (n * n) as f32;
        (fill, mask)
    }

    #[test]
    fn shapes_are_inside_their_frame_and_distinct() {
        let n = 100;
        let masks: Vec<(f32, Vec<bool>)> = ALL_SHAPES.iter().map(|s| mask(*s, n)).collect();
        for (shape, (fill, _)) in ALL_SHAPES.iter().zip(&masks) {
            assert!(*fill > 0.2 && *fill <= 1.0, "{}: {fill}", shape.name());
            // Nothing lies outside the frame: a point just outside is never inside.
            let polygon = shape.polygon();
            for k in 0..400 {
                let t = -1.0 + 2.0 * k as f32 / 399.0;
                for (u, v) in [(1.001, t), (-1.001, t), (t, 1.001), (t, -1.001)] {
                    assert!(!shape.contains(&polygon, u, v), "{}", shape.name());
                }
            }
        }
        // Square fills the frame, circle pi/4, ring pi/4 * (1 - 0.3025).
        let fill = |s: Shape| masks[ALL_SHAPES.iter().position(|x| *x == s).unwrap()].0;
        assert!((fill(Shape::Square) - 1.0).abs() < 1e-6);
        assert!((fill(Shape::Circle) - PI / 4.0).abs() < 0.01);
        assert!((fill(Shape::Ring) - PI / 4.0 * 0.6975).abs() < 0.01);
        assert!((fill(Shape::ThickRing) - PI / 4.0 * 0.8775).abs() < 0.01);
        assert!((fill(Shape::Ellipse) - PI / 4.0 * 0.6).abs() < 0.01);
        // Every pair of shapes differs on a clear share of the frame (look-alikes too).
        for a in 0..ALL_SHAPES.len() {
            for b in a + 1..ALL_SHAPES.len() {
                let differ = masks[a]
                    .1
                    .iter()
                    .zip(&masks[b].1)
                    .filter(|(x, y)| x != y)
                    .count() as f32
                    / (n * n) as f32;
                assert!(
                    differ > 0.03,
                    "{} vs {}: {differ}",
                    ALL_SHAPES[a].name(),
                    ALL_SHAPES[b].name()
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_round_trip_through_serde() {
        for (i, a) in ALL_SHAPES.iter().enumerate() {
            for b in &ALL_SHAPES[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
            let yaml = serde_yaml::to_string(a).unwrap();
            assert_eq!(yaml.trim(), a.name());
            assert_eq!(serde_yaml::from_str::<Shape>(&yaml).unwrap(), *a);
        }
    }
}
