//! Drawing shared by the sweep plots, the training curves and `lbwnet detect`'s pictures:
//! the font, the palette, atomic PNG rendering, line-plot primitives, and boxes with labels.
use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// The family name text is drawn with (DejaVu Sans, see [`register_fonts`]).
pub const FONT: &str = "sans-serif";

/// Line and box colours, taken in turn (matplotlib's first seven).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// plotters renders text with fonts registered by name; DejaVu Sans ships in a crate so
/// pictures look the same on machines without system fonts.
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Turns a plotters error into one saying what was being drawn (`drawing {what}: ...`).
pub fn draw_error<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |err| anyhow!("drawing {what}: {err:?}")
}

/// plotters writes to a path; render to a temporary one and rename, so `out` is either
/// the old file or the complete new one.
pub fn render(out: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    crate::fsutil::write_atomic_via_path(out, draw)
}

/// Writes `image` as a PNG at `path`, atomically.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic_with(path, |file| {
        let mut buffer = std::io::BufWriter::new(file);
        image.write_to(&mut buffer, image::ImageFormat::Png)?;
        use std::io::Write as _;
        buffer.flush()?;
        Ok(())
    })
}

/// A y range that shows `values` (fractions such as mAP) with some room around them,
/// kept inside [0, 1]; [0, 1] itself when there are none.
fn map_range(values: impl Iterator<Item = f64> + Clone) -> Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(0.02);
    (lo - pad).max(0.0)..(hi + pad).min(1.0)
}

/// One plotted point: x, the mean y, and its 95% interval when there are several seeds.
pub type Point = (f64, f64, Option<[f64; 2]>);

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What one line plot shows: its axes, its series of points, and a horizontal reference
/// line. y values are fractions (such as mAP); the y range is fitted to them.
pub struct LinePlot<'a> {
    pub caption: String,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x: Range<f64>,
    /// (legend label, points), each series in the next palette colour.
    pub series: &'a [(String, Vec<Point>)],
    /// (legend label, y) of a black line across the x range.
    pub reference: Option<(&'a str, f64)>,
}

/// Draws `plot` into an 800x500 PNG at `path`: each series as a line with dots and error
/// bars, then the reference line, then the legend. Errors read `drawing plot: ...`.
pub fn line_plot(path: &Path, plot: &LinePlot) -> Result<()> {
    register_fonts();
    let err = draw_error("plot");
    let reference = plot.reference.map(|(_, y)| y);
    let y = map_range(
        plot.series
            .iter()
            .flat_map(|(_, p)| {
                p.iter()
                    .flat_map(|&(_, y, ci)| [Some(y), ci.map(|c| c[0]), ci.map(|c| c[1])])
            })
            .flatten()
            .chain(reference),
    );
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart: Chart = ChartBuilder::on(&root)
        .caption(&plot.caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(plot.x.clone(), y)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(plot.x_desc)
        .y_desc(plot.y_desc)
        .label_style((FONT, 14))
        .draw()
        .map_err(&err)?;
    for (i, (label, points)) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let means = points.iter().map(|&(x, y, _)| (x, y));
        chart
            .draw_series(LineSeries::new(means.clone(), color.stroke_width(2)))
            .map_err(&err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(means.map(|p| Circle::new(p, 4, color.filled())))
            .map_err(&err)?;
        chart
            .draw_series(points.iter().filter_map(|&(x, y, ci)| {
                ci.map(|[lo, hi]| ErrorBar::new_vertical(x, lo, y, hi, color.stroke_width(1), 8))
            }))
            .map_err(&err)?;
    }
    if let Some((label, f)) = plot.reference {
        chart
            .draw_series(LineSeries::new(
                vec![(plot.x.start, f), (plot.x.end, f)],
                BLACK.stroke_width(1),
            ))
            .map_err(&err)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)
}

/// One box to draw onto an image.
pub struct LabeledBox {
    /// `[x1, y1, x2, y2]` in continuous pixel coordinates (x2, y2 are the far edges).
    pub corners: [f64; 4],
    pub label: String,
    /// Which palette colour (taken modulo the palette's size).
    pub color: usize,
}

/// `image` with `boxes` drawn in order (later ones on top): each an outline in its colour
/// with its label in white on a filled tag above it (inside, at the top edge of the
/// image). Line width and text size follow the image's size. Errors read
/// `drawing {what}: ...`.
pub fn draw_labeled_boxes(image: &RgbImage, boxes: &[LabeledBox], what: &str) -> Result<RgbImage> {
    register_fonts();
    let err = draw_error(what);
    let (width, height) = image.dimensions();
    let mut pixels = image.as_raw().clone();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let thickness = (width.min(height) / 200).clamp(1, 4);
        let font_size = f64::from((width.min(height) / 30).clamp(11, 28));
        for labeled in boxes {
            let color = PALETTE[labeled.color % PALETTE.len()];
            let [x1, y1, x2, y2] = labeled.corners.map(|v| v.round() as i32);
            let (x2, y2) = ((x2 - 1).max(x1), (y2 - 1).max(y1));
            root.draw(&Rectangle::new(
                [(x1, y1), (x2, y2)],
                color.stroke_width(thickness),
            ))
            .map_err(&err)?;
            let style = TextStyle::from((FONT, font_size).into_font()).color(&WHITE);
            let (text_w, text_h) = root
                .estimate_text_size(&labeled.label, &style)
                .map_err(&err)?;
            let (text_w, text_h) = (text_w as i32 + 4, text_h as i32 + 2);
            let top = if y1 - text_h >= 0 { y1 - text_h } else { y1 };
            root.draw(&Rectangle::new(
                [(x1, top), (x1 + text_w, top + text_h)],
                color.filled(),
            ))
            .map_err(&err)?;
            root.draw(&Text::new(labeled.label.as_str(), (x1 + 2, top + 1), style))
                .map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    RgbImage::from_raw(width, height, pixels)
        .with_context(|| format!("drawing {what}: buffer size"))
}
