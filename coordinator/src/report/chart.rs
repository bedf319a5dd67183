//! Line and grouped-bar charts as standalone SVG documents, for inline use in `report.html`:
//! nice y ticks, categorical x axis (checkpoints or categories), a legend below the plot,
//! a `<title>` tooltip on every point and bar. All text is escaped.

use std::fmt::Write;

use super::escape::escape;
use crate::output::svg::{self, FIGURE_WIDTH as WIDTH, PlotArea};

pub(super) const LEFT: f64 = 64.0;
pub(super) const RIGHT: f64 = 20.0;
pub(super) const TOP: f64 = 44.0;
pub(super) const PLOT_H: f64 = 240.0;
/// Room under the plot for the x labels (rotated ones need more).
const XLABELS_H: f64 = 34.0;
const XLABELS_ROTATED_H: f64 = 84.0;
pub(super) const LEGEND_ROW: f64 = 18.0;
pub(super) const LEGEND_ITEM_W: f64 = 190.0;
/// Bars get value labels only while they are few enough not to overlap.
const MAX_LABELLED_BARS: usize = 24;

/// Tableau-like colours, distinguishable and print-safe; series past the end reuse them dashed.
/// Thirteen, so CharacterEval's average and 12 metrics all get their own colour.
const PALETTE: [&str; 13] = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d",
    "#ff9da6", "#79706e", "#bcbd22", "#17becf", "#393b79",
];

/// A named sequence of values, one per x position (`None`: no value there).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    /// Positions whose change from the previous one is larger than noise (line charts ring
    /// them); empty when not tested.
    pub significant: Vec<bool>,
}

/// What to draw: title, y-axis label, x categories, series.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub x_labels: &'a [String],
    pub series: &'a [Series],
}

/// A y axis: range and tick step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) step: f64,
}

impl Axis {
    /// A range with round ticks covering `values` (from zero when `from_zero`); `None` without
    /// finite values.
    pub(super) fn covering(values: impl Iterator<Item = f64>, from_zero: bool) -> Option<Axis> {
        let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        let mut lo = finite.iter().copied().reduce(f64::min)?;
        let mut hi = finite.iter().copied().reduce(f64::max)?;
        if from_zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if hi - lo <= 1e-6 * hi.abs().max(lo.abs()).max(1e-300) {
            // One value (or values equal to 6 digits, e.g. float32 means of one score, whose
            // ticks would need 9 decimals): open a small window around it so the points sit
            // mid-plot.
            let pad = if hi != 0.0 { hi.abs() * 0.05 } else { 1.0 };
            hi += pad;
            if !from_zero || lo < 0.0 {
                lo -= pad;
            }
        }
        let step = nice_step((hi - lo) / 5.0);
        Some(Axis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        })
    }

    /// The y pixel of `v`.
    pub(super) fn y(&self, v: f64) -> f64 {
        TOP + PLOT_H - (v - self.lo) / (self.hi - self.lo) * PLOT_H
    }

    /// The tick values, bottom up.
    pub(super) fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(|k| self.lo + k as f64 * self.step).collect()
    }

    /// Decimals that tell the ticks apart.
    pub(super) fn decimals(&self) -> usize {
        (-self.step.log10().floor()).max(0.0) as usize
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * magnitude
}

/// A value for labels and tooltips: up to four decimals, trailing zeros dropped.
pub fn fmt_value(v: f64) -> String {
    let s = format!("{v:.4}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Colour and dash pattern of series `i`.
pub(super) fn style(i: usize) -> (&'static str, &'static str) {
    let dash = if i >= PALETTE.len() { "6,3" } else { "none" };
    (PALETTE[i % PALETTE.len()], dash)
}

/// The layout shared by both chart kinds.
struct Frame {
    axis: Axis,
    n: usize,
    rotated: bool,
    /// Legend entries per row, and where the legend starts (under the x labels).
    per_row: usize,
    legend_top: f64,
    height: f64,
}

impl Frame {
    /// The layout of `chart`, its y axis covering every value (and zero when `from_zero`);
    /// `None` when no series has a value.
    fn new(chart: &Chart, from_zero: bool) -> Option<Frame> {
        let values = chart
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied());
        let axis = Axis::covering(values, from_zero)?;
        let n = chart.x_labels.len().max(1);
        // Rotate the x labels when the longest (about 7 px a character) would not fit its band.
        let longest = chart
            .x_labels
            .iter()
            .map(|l| l.chars().count().min(24))
            .max();
        let band = (WIDTH - LEFT - RIGHT) / n as f64;
        let rotated = longest.unwrap_or(0) as f64 * 7.0 > band - 8.0;
        let per_row = ((WIDTH - LEFT - RIGHT) / LEGEND_ITEM_W).floor().max(1.0) as usize;
        let legend_rows = chart.series.len().div_ceil(per_row);
        let xlabels = if rotated {
            XLABELS_ROTATED_H
        } else {
            XLABELS_H
        };
        let legend_top = TOP + PLOT_H + xlabels;
        Some(Frame {
            axis,
            n,
            rotated,
            per_row,
            legend_top,
            height: legend_top + legend_rows as f64 * LEGEND_ROW + 10.0,
        })
    }

    fn band(&self) -> f64 {
        (WIDTH - LEFT - RIGHT) / self.n as f64
    }

    /// The x pixel of the centre of category `i`.
    fn x(&self, i: usize) -> f64 {
        LEFT + (i as f64 + 0.5) * self.band()
    }
}

/// A line per series over the x categories (checkpoints); gaps where a value is missing.
/// `None` when no series has a value.
pub fn line_chart(chart: &Chart) -> Option<String> {
    let frame = Frame::new(chart, false)?;
    let mut s = open(chart, &frame);
    for (i, series) in chart.series.iter().enumerate() {
        let (colour, dash) = style(i);
        for run in runs(&series.values) {
            if run.len() > 1 {
                let points: Vec<String> = run
                    .iter()
                    .map(|&(x, v)| format!("{:.1},{:.1}", frame.x(x), frame.axis.y(v)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                    points.join(" ")
                );
            }
        }
        for (x, v) in series.values.iter().enumerate() {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                let ring = series.significant.get(x).copied().unwrap_or(false);
                if ring {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="7" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                        frame.x(x),
                        frame.axis.y(v)
                    );
                }
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {}{}</title></circle>"#,
                    frame.x(x),
                    frame.axis.y(v),
                    escape(&format!("{} · {}", label(chart, x), series.name)),
                    fmt_value(v),
                    if ring {
                        " (change larger than noise)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    legend(&mut s, chart, &frame, false);
    svg::close(&mut s);
    Some(s)
}

/// Grouped bars: one group per x category, one bar per series, from zero. `None` when no
/// series has a value.
pub fn bar_chart(chart: &Chart) -> Option<String> {
    let frame = Frame::new(chart, true)?;
    let mut s = open(chart, &frame);
    let k = chart.series.len().max(1);
    let bar_w = frame.band() * 0.8 / k as f64;
    let labelled = frame.n * k <= MAX_LABELLED_BARS;
    let zero = frame.axis.y(0.0);
    for (j, series) in chart.series.iter().enumerate() {
        let (colour, _) = style(j);
        for (x, v) in series.values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let x0 = frame.x(x) - frame.band() * 0.4 + j as f64 * bar_w;
            let y = frame.axis.y(v);
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                y.min(zero),
                (bar_w - 1.0).max(1.0),
                (zero - y).abs(),
                escape(&format!("{} · {}", label(chart, x), series.name)),
                fmt_value(v)
            );
            if labelled {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    x0 + bar_w / 2.0,
                    y.min(zero) - 3.0,
                    fmt_value(v)
                );
            }
        }
    }
    legend(&mut s, chart, &frame, true);
    svg::close(&mut s);
    Some(s)
}

/// The x label of category `i`.
fn label<'a>(chart: &'a Chart, i: usize) -> &'a str {
    chart.x_labels.get(i).map_or("", |l| l.as_str())
}

/// Maximal runs of consecutive finite values, as `(x, value)`.
fn runs(values: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut out: Vec<Vec<(usize, f64)>> = vec![Vec::new()];
    for (x, v) in values.iter().enumerate() {
        match v.filter(|v| v.is_finite()) {
            Some(v) => {
                if let Some(run) = out.last_mut() {
                    run.push((x, v));
                }
            }
            None if out.last().is_some_and(|r| !r.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// The SVG header, title, grid, axes and x labels.
fn open(chart: &Chart, frame: &Frame) -> String {
    let (w, h) = (WIDTH, frame.height);
    let base = TOP + PLOT_H;
    let mut s = String::new();
    svg::open(&mut s, h, Some(&escape(chart.title)));
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        w / 2.0,
        escape(chart.title)
    );
    for tick in frame.axis.ticks() {
        let y = frame.axis.y(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" text-anchor="end">{:.*}</text>"##,
            w - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            frame.axis.decimals(),
            tick
        );
    }
    let area = PlotArea {
        left: LEFT,
        top: TOP,
        right: w - RIGHT,
        bottom: base,
    };
    svg::axis_lines(&mut s, area);
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(chart.y_label)
    );
    for (i, l) in chart.x_labels.iter().enumerate() {
        let short: String = if l.chars().count() > 24 {
            l.chars().take(23).chain(['…']).collect()
        } else {
            l.clone()
        };
        let (x, y) = (frame.x(i), base + 16.0);
        let text = escape(&short);
        let _ = if frame.rotated {
            writeln!(
                s,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="end" transform="rotate(-35 {x:.1} {y:.1})">{text}<title>{}</title></text>"#,
                escape(l)
            )
        } else {
            writeln!(
                s,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{text}</text>"#
            )
        };
    }
    s
}

/// The legend under the x labels: a swatch (bar) or a short line (line chart) per series.
fn legend(s: &mut String, chart: &Chart, frame: &Frame, bars: bool) {
    let (per_row, top) = (frame.per_row, frame.legend_top);
    for (i, series) in chart.series.iter().enumerate() {
        let (colour, dash) = style(i);
        let x = LEFT + (i % per_row) as f64 * LEGEND_ITEM_W;
        let y = top + (i / per_row) as f64 * LEGEND_ROW;
        let _ = if bars {
            writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/>"#,
                y - 10.0
            )
        } else {
            writeln!(
                s,
                r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                y - 4.0,
                x + 16.0,
                y - 4.0
            )
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{y}">{}</text>"#,
            x + 20.0,
            escape(&series.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart<'a>(x: &'a [String], series: &'a [Series]) -> Chart<'a> {
        Chart {
            title: "A <b>&",
            y_label: "score",
            x_labels: x,
            series,
        }
    }

    #[test]
    fn nice_axes() {
        let a = Axis::covering([0.81, 0.93].into_iter(), false).expect("axis");
        assert_eq!((a.lo, a.step), (0.8, 0.05));
        assert!((a.hi - 0.95).abs() < 1e-12);
        assert_eq!(a.decimals(), 2);
        let a = Axis::covering([66.91].into_iter(), true).expect("axis");
        assert_eq!((a.lo, a.hi, a.step), (0.0, 80.0, 20.0));
        assert_eq!(a.ticks().len(), 5);
        assert!(Axis::covering([f64::NAN].into_iter(), false).is_none());
    }

    #[test]
    fn lines_break_at_gaps_and_escape_text() {
        let x: Vec<String> = ["c-1", "c-2", "c-3", "c-4"].map(String::from).to_vec();
        let series = [Series {
            name: "rouge<1>".into(),
            values: vec![Some(1.0), Some(2.0), None, Some(3.0)],
            significant: vec![false, true, false, false],
        }];
        let svg = line_chart(&chart(&x, &series)).expect("svg");
        assert_eq!(svg.matches("<polyline").count(), 1);
        // Three points, one ringed as significant.
        assert_eq!(svg.matches("<circle").count(), 4);
        assert_eq!(svg.matches("(change larger than noise)").count(), 1);
        assert!(svg.contains("A &lt;b&gt;&amp;") && svg.contains("rouge&lt;1&gt;"));
        assert!(!svg.contains("<b>"));
        let empty = [Series {
            name: "x".into(),
            values: vec![None; 4],
            ..Default::default()
        }];
        assert!(line_chart(&chart(&x, &empty)).is_none());
    }

    #[test]
    fn one_bar_per_value() {
        let x: Vec<String> = ["STEM", "Other"].map(String::from).to_vec();
        let series = [
            Series {
                name: "a".into(),
                values: vec![Some(50.0), Some(60.0)],
                ..Default::default()
            },
            Series {
                name: "b".into(),
                values: vec![None, Some(70.0)],
                ..Default::default()
            },
        ];
        let svg = bar_chart(&chart(&x, &series)).expect("svg");
        // Three bars plus the two legend swatches (the background rect has no x).
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert!(svg.contains(">70</text>"));
    }
}
