//! PNG plots of a sweep: mAP against c for each bit-width, and mAP against bit-width at
//! the best c, with the float model as a reference line. Points are means over seeds with
//! their 95% intervals as error bars.
use crate::draw::{line_plot, render, LinePlot, Point};
use crate::experiments::table::SweepTable;
use anyhow::Result;
use std::path::Path;

/// Writes `map_vs_c.png` and `map_vs_bits.png` into `dir` (atomically).
pub fn write_plots(table: &SweepTable, dir: &Path) -> Result<()> {
    let float_line = table
        .rows
        .iter()
        .find(|r| r.method == "float")
        .map(|r| ("32-bit float", r.map));
    render(&dir.join("map_vs_c.png"), |path| {
        plot_map_vs_c(table, float_line, path)
    })?;
    render(&dir.join("map_vs_bits.png"), |path| {
        plot_map_vs_bits(table, float_line, path)
    })
}

/// mAP against c: one line per bit-width over the LBW cells' c values (x padded by 10%).
fn plot_map_vs_c(table: &SweepTable, float_line: Option<(&str, f64)>, path: &Path) -> Result<()> {
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
    let plot = LinePlot {
        caption: format!("mAP against c (sweep {})", table.sweep),
        x_desc: "c (alpha = c * mean|W|)",
        y_desc: "mAP",
        x,
        series: &series,
        reference: float_line,
    };
    line_plot(path, &plot)
}

/// mAP against bit-width: one line through each bit-width's best cell.
fn plot_map_vs_bits(
    table: &SweepTable,
    float_line: Option<(&str, f64)>,
    path: &Path,
) -> Result<()> {
    let mut points: Vec<Point> = table
        .best_per_bits()
        .iter()
        .filter(|r| r.method != "float")
        .map(|r| (r.bits as f64, r.map, r.map_ci95))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let plot = LinePlot {
        caption: format!("mAP against bit-width, best c (sweep {})", table.sweep),
        x_desc: "weight bits",
        y_desc: "mAP",
        x: 1.5..8.5,
        series: &[("quantized (best c)".to_string(), points)],
        reference: float_line,
    };
    line_plot(path, &plot)
}
