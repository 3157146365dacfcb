//! A run's training log and its curves.
//!
//! `log.jsonl` holds one JSON object per line: every logged iteration (`train.log_interval`
//! and the last one) and every evaluation, each appended and flushed when it happens, so a
//! killed run keeps what it logged. `--resume` continues the same file: lines past the
//! checkpoint it resumes from (logged after that checkpoint, before the kill) are dropped
//! first, so the resumed log has every logged iteration once. `curves.png` draws it: the
//! loss and its parts and the learning rate over iterations, and the mAP at the
//! evaluations.
//!
//! ```text
//! {"type":"iteration","iteration":20,"loss":1.9,"losses":{"rpn_cls":0.6,"rpn_box":0.1,"cls":1.1,"box":0.1},"lr":0.001,"images_per_second":3.1,"elapsed_seconds":6.4}
//! {"type":"evaluation","iteration":70000,"metric":"voc07","map":0.71,"coco_ap":0.42}
//! ```
//!
//! Only `images_per_second` and `elapsed_seconds` (wall-clock) differ between two runs of
//! one config; the curves leave them out, so `curves.png` is reproducible too.
use crate::draw::{draw_error, register_fonts, render, FONT, PALETTE};
use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The log's file name in the run directory.
pub const LOG_FILE: &str = "log.jsonl";
/// The curves' file name in the run directory.
pub const CURVES_FILE: &str = "curves.png";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Iteration(IterationRecord),
    Evaluation(EvaluationRecord),
}

impl Record {
    /// The iteration it was logged at (after that many SGD steps).
    pub fn iteration(&self) -> usize {
        match self {
            Record::Iteration(r) => r.iteration,
            Record::Evaluation(r) => r.iteration,
        }
    }
}

/// A logged iteration: the loss after `iteration` steps' last batch, and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// Iterations done (1-based: the first step logs 1).
    pub iteration: usize,
    /// The total loss (the sum of `losses`).
    pub loss: f64,
    /// Each term of the loss by name, in the model's order.
    pub losses: serde_json::Map<String, serde_json::Value>,
    /// The learning rate of this iteration's step.
    pub lr: f64,
    /// Images per second since the previous logged iteration (or the start / resume).
    pub images_per_second: f64,
    /// Training seconds since the run started, over all its resumes (time between the
    /// last checkpoint and a kill is not counted).
    pub elapsed_seconds: f64,
}

/// An evaluation of the model after `iteration` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    pub iteration: usize,
    /// `eval.metric`'s name (`voc07`, `area`, `coco`).
    pub metric: String,
    /// Mean AP under `metric`.
    pub map: f64,
    /// COCO AP@[.5:.95].
    pub coco_ap: f64,
}

/// The log of a run being trained: the records so far, and the file new ones go to.
pub struct TrainingLog {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
}

impl TrainingLog {
    /// A fresh run's log: `run_dir/log.jsonl`, emptied.
    pub fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOG_FILE);
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            file,
            records: Vec::new(),
        })
    }

    /// The log of a run resumed from its checkpoint at `checkpoint`, which will train to
    /// `iterations`: the lines logged up to the checkpoint are kept, byte for byte. Dropped
    /// (with a note in the tracing log): iterations past the checkpoint (logged before a
    /// kill; they are logged again), an evaluation past it, or at it when the resumed run
    /// evaluates there again (its last iteration), and a line cut short by a kill or
    /// otherwise unreadable. A run without a log (from an older lbwnet) starts one here.
    pub fn resume(run_dir: &Path, checkpoint: usize, iterations: usize) -> Result<Self> {
        let path = run_dir.join(LOG_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    "{} is missing: the log starts at iteration {checkpoint}",
                    path.display()
                );
                String::new()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (mut kept, mut records, mut dropped) = (String::new(), Vec::new(), 0usize);
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (number, line) in lines.iter().enumerate() {
            // A last line without its newline was cut short, even if it parses.
            let cut_short = number + 1 == lines.len() && !complete;
            let record = match serde_json::from_str::<Record>(line) {
                Ok(record) if !cut_short => record,
                Ok(_) | Err(_) => {
                    tracing::warn!(
                        "{}:{}: dropping an unreadable line{}",
                        path.display(),
                        number + 1,
                        if cut_short {
                            " (cut short by a kill)"
                        } else {
                            ""
                        }
                    );
                    continue;
                }
            };
            let keep = match &record {
                Record::Iteration(r) => r.iteration <= checkpoint,
                Record::Evaluation(r) => {
                    r.iteration < checkpoint
                        || (r.iteration == checkpoint && checkpoint < iterations)
                }
            };
            if keep {
                kept.push_str(line);
                kept.push('\n');
                records.push(record);
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                "{}: dropped {dropped} line(s) logged after the checkpoint at iteration {checkpoint}",
                path.display()
            );
        }
        if kept.len() != text.len() {
            crate::fsutil::write_atomic(&path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            file,
            records,
        })
    }

    /// Appends `record` as one line, written in one call and flushed.
    pub fn append(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.records.push(record);
        Ok(())
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of the log at `path`; an unreadable line is an error naming it.
pub fn read_log(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a log record", path.display(), i + 1))
        })
        .collect()
}

/// Panel heights of the picture: losses, learning rate, mAP.
const PANELS: [u32; 3] = [520, 260, 300];
/// The picture's width, and the part of it on the right that holds the legends.
const WIDTH: u32 = 1000;
const LEGEND_WIDTH: u32 = 220;
/// Lines with more points than this are drawn as moving averages (of about 1% of them).
const RAW_POINTS: usize = 200;
/// The loss scale spans at most this many decades below the largest value; smaller
/// values (and zeros) are drawn on its bottom edge.
const LOSS_DECADES: f64 = 4.0;

/// Draws `records` into `path` (atomically): the loss and its parts on a log scale, the
/// learning rate on a log scale, and the mAP at the evaluations (COCO AP@[.5:.95] beside
/// it when the metric is another), all over iterations, legends on the right. Only
/// config-determined values are drawn, so two runs of one config draw the same bytes.
pub fn draw_curves(records: &[Record], title: &str, path: &Path) -> Result<()> {
    render(path, |tmp| draw_to(records, title, tmp))
}

fn draw_to(records: &[Record], title: &str, path: &Path) -> Result<()> {
    register_fonts();
    let err = draw_error("training curves");
    let height = PANELS.iter().sum::<u32>() + 40;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let root = root.titled(title, (FONT, 22)).map_err(&err)?;
    let (losses_area, rest) = root.split_vertically(PANELS[0]);
    let (lr_area, map_area) = rest.split_vertically(PANELS[1]);

    let iterations: Vec<&IterationRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Iteration(r) => Some(r),
            Record::Evaluation(_) => None,
        })
        .collect();
    let evaluations: Vec<&EvaluationRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Evaluation(r) => Some(r),
            Record::Iteration(_) => None,
        })
        .collect();
    let last = records.iter().map(Record::iteration).max().unwrap_or(0);
    let x = 0.0..(last.max(1) as f64) * 1.02;
    let window = iterations.len().div_ceil(100).max(1);
    let smoothed = iterations.len() > RAW_POINTS;

    // The loss and its parts, in the model's order after the total.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "loss (total)".into(),
        iterations
            .iter()
            .map(|r| (r.iteration as f64, r.loss))
            .collect(),
    )];
    for r in &iterations {
        for (name, value) in &r.losses {
            let Some(v) = value.as_f64() else { continue };
            let point = (r.iteration as f64, v);
            match series.iter_mut().find(|(n, _)| n == name) {
                Some((_, points)) => points.push(point),
                None => series.push((name.clone(), vec![point])),
            }
        }
    }
    let loss_caption = if smoothed {
        format!("loss (each point the mean of the last {window} logged iterations)")
    } else {
        "loss".to_string()
    };
    if smoothed {
        for (_, points) in &mut series {
            *points = moving_average(points, window);
        }
    }
    log_panel(
        &losses_area,
        &Panel {
            caption: &loss_caption,
            y_desc: "loss (log scale)",
            x: x.clone(),
            series: &series,
            dots: iterations.len() <= 60,
            legend: true,
            decades: Some(LOSS_DECADES),
        },
    )
    .map_err(&err)?;
    let lr: Vec<(f64, f64)> = iterations
        .iter()
        .map(|r| (r.iteration as f64, r.lr))
        .collect();
    log_panel(
        &lr_area,
        &Panel {
            caption: "learning rate",
            y_desc: "learning rate (log scale)",
            x: x.clone(),
            series: &[("learning rate".into(), lr)],
            dots: false,
            legend: false,
            decades: None,
        },
    )
    .map_err(&err)?;
    map_panel(&map_area, &evaluations, x).map_err(&err)?;
    root.present().map_err(&err)
}

/// Each point's y replaced by the mean over it and the `window - 1` points before it.
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let finite: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    let mut sum = 0.0;
    finite
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= finite[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// One panel of lines over iterations.
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    x: Range<f64>,
    /// (legend label, points); the first in black and thicker, the rest in the palette.
    series: &'a [(String, Vec<(f64, f64)>)],
    /// Mark each point (few points).
    dots: bool,
    legend: bool,
    /// At most this many decades below the largest value.
    decades: Option<f64>,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type PlotError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// `series` on a log y scale from a power of ten up to a little above their largest
/// value; values below the scale (zeros too) are drawn on its bottom edge, non-finite
/// ones are left out. Ticks are labelled at 1, 2 and 5 times powers of ten.
fn log_panel(area: &Area, panel: &Panel) -> Result<(), PlotError> {
    let (plot_area, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let finite = |&(_, y): &(f64, f64)| y.is_finite();
    let positive = panel
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().filter(|p| finite(p) && p.1 > 0.0).map(|p| p.1));
    let lo = positive.clone().fold(f64::INFINITY, f64::min);
    let hi = positive.fold(f64::NEG_INFINITY, f64::max);
    let y = if lo.is_finite() {
        let floor = panel.decades.map_or(lo, |d| lo.max(hi / 10f64.powf(d)));
        // Just under a power of ten, so that it gets its tick.
        10f64.powf(floor.log10().floor()) * 0.99..hi * 1.5
    } else {
        0.01..1.0
    };
    let bottom = y.start;
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(panel.caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(panel.x.clone(), y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc(panel.y_desc)
        .x_label_formatter(&|v| whole_number(*v))
        .y_label_formatter(&|v| log_tick(*v))
        // Minor lines between the 1..9 ticks would crowd the top of a decade.
        .y_max_light_lines(0)
        .label_style((FONT, 14))
        .draw()?;
    if !lo.is_finite() {
        return no_data(&plot_area, "no logged iteration yet");
    }
    let mut legend = Vec::new();
    for (i, (label, points)) in panel.series.iter().enumerate() {
        let (color, width) = if i == 0 {
            (BLACK, 2)
        } else {
            (PALETTE[(i - 1) % PALETTE.len()], 1)
        };
        let points: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| finite(p))
            .map(|&(x, y)| (x, y.max(bottom)))
            .collect();
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(width),
        ))?;
        if panel.dots {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        legend.push((label.clone(), Marker::Line(color)));
    }
    if panel.legend {
        draw_legend(&legend_area, &legend)?;
    }
    Ok(())
}

/// How a legend entry is marked.
#[derive(Clone, Copy)]
enum Marker {
    Line(RGBColor),
    Dot(RGBColor),
    /// A continuation of the entry above.
    None,
}

/// A legend in its own area: each entry's marker, then its label.
fn draw_legend(area: &Area, entries: &[(String, Marker)]) -> Result<(), PlotError> {
    let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK);
    for (i, (label, marker)) in entries.iter().enumerate() {
        let y = 50 + 22 * i as i32;
        match *marker {
            Marker::Line(color) => area.draw(&PathElement::new(
                vec![(0, y), (28, y)],
                color.stroke_width(2),
            ))?,
            Marker::Dot(color) => area.draw(&Circle::new((14, y), 5, color.filled()))?,
            Marker::None => {}
        }
        area.draw(&Text::new(label.as_str(), (36, y - 8), style.clone()))?;
    }
    Ok(())
}

/// The mAP at each evaluation (dots joined by a line), and COCO AP@[.5:.95] when the
/// metric is another; y from 0 to a little above the best value.
fn map_panel(
    area: &Area,
    evaluations: &[&EvaluationRecord],
    x: Range<f64>,
) -> Result<(), PlotError> {
    let (plot_area, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let finite = |v: f64| v.is_finite() && v >= 0.0;
    let hi = evaluations
        .iter()
        .flat_map(|e| [e.map, e.coco_ap])
        .filter(|&v| finite(v))
        .fold(0.0, f64::max);
    let y = 0.0..(hi * 1.15).clamp(0.1, 1.0);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption("evaluations", (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("mAP")
        .x_label_formatter(&|v| whole_number(*v))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 14))
        .draw()?;
    if evaluations.is_empty() {
        return no_data(
            &plot_area,
            "no evaluation yet (the run evaluates when it finishes)",
        );
    }
    let metric = &evaluations[evaluations.len() - 1].metric;
    let mut series = vec![(
        format!("mAP ({metric})"),
        evaluations
            .iter()
            .map(|e| (e.iteration as f64, e.map))
            .collect::<Vec<_>>(),
    )];
    if metric != "coco" {
        series.push((
            "COCO AP@[.5:.95]".into(),
            evaluations
                .iter()
                .map(|e| (e.iteration as f64, e.coco_ap))
                .collect(),
        ));
    }
    let mut legend = Vec::new();
    for (i, (label, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = points.iter().copied().filter(|p| finite(p.1)).collect();
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        legend.push((label.clone(), Marker::Dot(color)));
        if let Some(&(x, y)) = points.last() {
            legend.push((format!("{y:.4} at iteration {x}"), Marker::None));
        }
    }
    draw_legend(&legend_area, &legend)
}

/// `text` in grey in the middle of `area`.
fn no_data(area: &Area, text: &str) -> Result<(), PlotError> {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 16).into_font())
        .color(&RGBColor(120, 120, 120))
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
    area.draw(&Text::new(text, (w as i32 / 2, h as i32 / 2), style))
}

/// An iteration tick label: whole numbers only (a short run's axis has ticks between).
fn whole_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// A log-scale tick label: 1, 2 and 5 times a power of ten (`0.2`, `5`, `1e-4`); the
/// other ticks get grid lines only.
fn log_tick(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return String::new();
    }
    let magnitude = v.log10().floor();
    let mantissa = v / 10f64.powf(magnitude);
    let (lead, mantissa) = if (mantissa - 10.0).abs() < 1e-6 {
        (magnitude + 1.0, 1.0)
    } else {
        (magnitude, mantissa.round())
    };
    if (v / 10f64.powf(lead) - mantissa).abs() > 1e-6 || ![1.0, 2.0, 5.0].contains(&mantissa) {
        return String::new();
    }
    short_number(mantissa * 10f64.powf(lead))
}

/// A number in a few characters: `0.25`, `3`, `1500`, `1e-4`, `2.5e-5`.
fn short_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor();
    if (-2.0..4.0).contains(&magnitude) {
        let decimals = (2.0 - magnitude).max(0.0) as usize;
        let text = format!("{v:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        let mantissa = v / 10f64.powf(magnitude);
        if (mantissa - mantissa.round()).abs() < 1e-6 {
            format!("{}e{}", mantissa.round(), magnitude)
        } else {
            format!("{mantissa:.1}e{magnitude}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_one_two_and_five() {
        let labels: Vec<String> = [
            1e-4, 2e-4, 3e-4, 5e-4, 0.1, 0.2, 0.7, 1.0, 2.0, 9.0, 10.0, 20.0,
        ]
        .iter()
        .map(|&v| log_tick(v))
        .collect();
        assert_eq!(
            labels,
            ["1e-4", "2e-4", "", "5e-4", "0.1", "0.2", "", "1", "2", "", "10", "20"]
        );
    }

    #[test]
    fn moving_averages_cover_the_last_points() {
        let points = [
            (1.0, 1.0),
            (2.0, 3.0),
            (3.0, 5.0),
            (4.0, f64::NAN),
            (5.0, 7.0),
        ];
        assert_eq!(
            moving_average(&points, 2),
            [(1.0, 1.0), (2.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
        );
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(0.0001), "1e-4");
        assert_eq!(short_number(0.0005), "5e-4");
        assert_eq!(short_number(0.012), "0.012");
        assert_eq!(short_number(1500.0), "1500");
    }
}
