//! PNG plots of a sweep: mAP against c for each bit-width, and mAP against bit-width at
//! the best c, with the float model as a reference line. Points are means over seeds with
//! their 95% intervals as error bars.
use crate::experiments::table::SweepTable;
use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// The family name text is drawn with (DejaVu Sans, see [`register_fonts`]).
pub(crate) const FONT: &str = "sans-serif";
pub(crate) const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// plotters renders text with fonts registered by name; DejaVu Sans ships in a crate so
/// plots look the same on machines without system fonts.
pub(crate) fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn draw_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing plot: {err:?}")
}

/// Writes `map_vs_c.png` and `map_vs_bits.png` into `dir` (atomically).
pub fn write_plots(table: &SweepTable, dir: &Path) -> Result<()> {
    register_fonts();
    let float_map = table
        .rows
        .iter()
        .find(|r| r.method == "float")
        .map(|r| r.map);
    render(&dir.join("map_vs_c.png"), |path| {
        plot_map_vs_c(table, float_map, path)
    })?;
    render(&dir.join("map_vs_bits.png"), |path| {
        plot_map_vs_bits(table, float_map, path)
    })
}

/// plotters writes to a path; render to a temporary one and rename.
fn render(out: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    crate::fsutil::write_atomic_via_path(out, draw)
}

fn map_range(values: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(0.02);
    (lo - pad).max(0.0)..(hi + pad).min(1.0)
}

/// One plotted point: x, the mean mAP, and its 95% interval when there are several seeds.
type Point = (f64, f64, Option<[f64; 2]>);

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one line plot: `series` is a list of (label, points), the float model a black
/// reference line across the x range.
fn line_plot(
    path: &Path,
    caption: String,
    x_desc: &str,
    x: std::ops::Range<f64>,
    series: &[(String, Vec<Point>)],
    float_map: Option<f64>,
) -> Result<()> {
    let y = map_range(
        series
            .iter()
            .flat_map(|(_, p)| {
                p.iter()
                    .flat_map(|&(_, y, ci)| [Some(y), ci.map(|c| c[0]), ci.map(|c| c[1])])
            })
            .flatten()
            .chain(float_map),
    );
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart: Chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x.clone(), y)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("mAP")
        .label_style((FONT, 14))
        .draw()
        .map_err(draw_error)?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let means = points.iter().map(|&(x, y, _)| (x, y));
        chart
            .draw_series(LineSeries::new(means.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(means.map(|p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error)?;
        chart
            .draw_series(points.iter().filter_map(|&(x, y, ci)| {
                ci.map(|[lo, hi]| ErrorBar::new_vertical(x, lo, y, hi, color.stroke_width(1), 8))
            }))
            .map_err(draw_error)?;
    }
    if let Some(f) = float_map {
        chart
            .draw_series(LineSeries::new(
                vec![(x.start, f), (x.end, f)],
                BLACK.stroke_width(1),
            ))
            .map_err(draw_error)?
            .label("32-bit float")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)
}

fn plot_map_vs_c(table: &SweepTable, float_map: Option<f64>, path: &Path) -> Result<()> {
    let lbw: Vec<_> = table.rows.iter().filter(|r| r.c.is_some()).collect();
    let cs = lbw.iter().filter_map(|r| r.c);
    let (c_lo, c_hi) = (
        cs.clone().fold(f64::INFINITY, f64::min),
        cs.fold(f64::NEG_INFINITY, f64::max),
    );
    let x = if c_lo.is_finite() {
        c_lo * 0.9..c_hi * 1.1
    } else {
        0.0..1.0
    };
    let mut bits: Vec<u32> = lbw.iter().map(|r| r.bits).collect();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    bits.dedup();
    let series: Vec<(String, Vec<Point>)> = bits
        .iter()
        .map(|b| {
            let mut points: Vec<Point> = lbw
                .iter()
                .filter(|r| r.bits == *b)
                .filter_map(|r| r.c.map(|c| (c, r.map, r.map_ci95)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (format!("{b} bits"), points)
        })
        .collect();
    let caption = format!("mAP against c (sweep {})", table.sweep);
    line_plot(
        path,
        caption,
        "c (alpha = c * mean|W|)",
        x,
        &series,
        float_map,
    )
}

fn plot_map_vs_bits(table: &SweepTable, float_map: Option<f64>, path: &Path) -> Result<()> {
    let mut points: Vec<Point> = table
        .best_per_bits()
        .iter()
        .filter(|r| r.method != "float")
        .map(|r| (r.bits as f64, r.map, r.map_ci95))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let caption = format!("mAP against bit-width, best c (sweep {})", table.sweep);
    let series = [("quantized (best c)".to_string(), points)];
    line_plot(path, caption, "weight bits", 1.5..8.5, &series, float_map)
}
