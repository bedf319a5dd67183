//! Line charts over a numeric x axis (training steps), as standalone SVG for `report.html`:
//! nice ticks on both axes, one polyline per series, dots with a `<title>` tooltip for sparse
//! series (held-out evaluations) and none for dense ones (a loss per optimizer step), a legend
//! under the plot. Shares the look of [`super::chart`].

use std::fmt::Write;

use super::chart::{Axis, LEFT, LEGEND_ITEM_W, LEGEND_ROW, PLOT_H, RIGHT, TOP, fmt_value, style};
use super::escape::escape;
use crate::output::svg::{self, FIGURE_WIDTH as WIDTH, PlotArea};

/// Series with more points than this are drawn without dots (the line says it all).
const MAX_DOTS: usize = 40;
/// Room under the plot for the x tick labels and the x axis label.
const XAXIS_H: f64 = 60.0;

/// A named line of `(x, y)` points in x order; non-finite values break the line.
#[derive(Debug, Clone, PartialEq)]
pub struct XySeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub struct XyChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [XySeries],
}

/// The chart, or `None` when no series has a finite point.
pub fn xy_chart(chart: &XyChart) -> Option<String> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| finite(p)))
    };
    let xs = Axis::covering(points().map(|p| p.0), false)?;
    let ys = Axis::covering(points().map(|p| p.1), false)?;
    let plot_w = WIDTH - LEFT - RIGHT;
    let px = |x: f64| LEFT + (x - xs.lo) / (xs.hi - xs.lo) * plot_w;
    let per_row = (plot_w / LEGEND_ITEM_W).floor().max(1.0) as usize;
    let legend_top = TOP + PLOT_H + XAXIS_H;
    let height = legend_top + chart.series.len().div_ceil(per_row) as f64 * LEGEND_ROW + 10.0;

    let mut s = String::new();
    svg::open(&mut s, height, Some(&escape(chart.title)));
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(chart.title)
    );
    let base = TOP + PLOT_H;
    for tick in ys.ticks() {
        let y = ys.y(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" text-anchor="end">{:.*}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            ys.decimals(),
            tick
        );
    }
    for tick in xs.ticks() {
        let x = px(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{base}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{:.*}</text>"##,
            base + 4.0,
            base + 17.0,
            xs.decimals(),
            tick
        );
    }
    let area = PlotArea {
        left: LEFT,
        top: TOP,
        right: WIDTH - RIGHT,
        bottom: base,
    };
    svg::axis_lines(&mut s, area);
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(chart.y_label),
        LEFT + plot_w / 2.0,
        base + 36.0,
        escape(chart.x_label)
    );
    for (i, series) in chart.series.iter().enumerate() {
        let (colour, dash) = style(i);
        for run in series.points.split(|p| !finite(p)).filter(|r| r.len() > 1) {
            let points: Vec<String> = run
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), ys.y(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8" stroke-dasharray="{dash}"/>"#,
                points.join(" ")
            );
        }
        let drawn: Vec<&(f64, f64)> = series.points.iter().filter(|p| finite(p)).collect();
        // A lone point has no line: it always gets its dot.
        if drawn.len() <= MAX_DOTS {
            for &&(x, y) in &drawn {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} @ {}: {}</title></circle>"#,
                    px(x),
                    ys.y(y),
                    escape(&series.name),
                    fmt_value(x),
                    fmt_value(y)
                );
            }
        }
        let lx = LEFT + (i % per_row) as f64 * LEGEND_ITEM_W;
        let ly = legend_top + (i / per_row) as f64 * LEGEND_ROW;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly - 4.0,
            lx + 20.0,
            escape(&series.name)
        );
    }
    svg::close(&mut s);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_series_have_no_dots_and_gaps_break_lines() {
        let dense = XySeries {
            name: "train <loss>".into(),
            points: (1..=100).map(|i| (i as f64, 1.0 / i as f64)).collect(),
        };
        let sparse = XySeries {
            name: "eval".into(),
            points: vec![(0.0, 1.0), (50.0, f64::NAN), (100.0, 0.5), (120.0, 0.4)],
        };
        let series = [dense, sparse];
        let svg = xy_chart(&XyChart {
            title: "Loss",
            x_label: "step",
            y_label: "loss",
            series: &series,
        })
        .expect("svg");
        // One line for the dense series, one for the sparse one's run after the gap.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "dots only for the sparse series"
        );
        assert!(svg.contains("<title>eval @ 100: 0.5</title>"));
        assert!(svg.contains("train &lt;loss&gt;"));
        // x ticks are round numbers covering 0..120: 0, 50, 100, 150.
        assert!(
            svg.contains(">50</text>") && svg.contains(">150</text>"),
            "{svg}"
        );
        let empty = [XySeries {
            name: "x".into(),
            points: vec![(1.0, f64::NAN)],
        }];
        assert!(
            xy_chart(&XyChart {
                title: "t",
                x_label: "x",
                y_label: "y",
                series: &empty
            })
            .is_none()
        );
    }
}
