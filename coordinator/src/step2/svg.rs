//! The histogram of the step-2 scores as a small standalone SVG: one bar per bin over [-1, 1],
//! count and score axes, dashed lines at the mean and the median, and a title with the summary.

use std::fmt::Write;

use super::distribution::{Distribution, HISTOGRAM_RANGE};
use crate::output::svg::{self, FIGURE_WIDTH as WIDTH, PlotArea};

// The figure's geometry, in pixels (the PNG raster uses the same, see [`super::png`]).
pub(super) const HEIGHT: f64 = 400.0;
pub(super) const LEFT: f64 = 60.0;
pub(super) const RIGHT: f64 = 20.0;
pub(super) const TOP: f64 = 50.0;
pub(super) const BOTTOM: f64 = 50.0;

/// Maps a score in the histogram range to an x pixel.
pub(super) fn x_of(score: f64) -> f64 {
    let (lo, hi) = HISTOGRAM_RANGE;
    LEFT + (score.clamp(lo, hi) - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT)
}

/// The SVG document for `d`.
pub fn histogram_svg(d: &Distribution) -> String {
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = TOP + plot_h;
    let max_count = d.counts.iter().copied().max().unwrap_or(0).max(1);
    let mut s = String::new();
    svg::open(&mut s, HEIGHT, None);
    // `write!` into a String cannot fail.
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Semantic similarity: {} pairs, mean {:.4}, median {:.4}</text>"#,
        WIDTH / 2.0,
        d.count,
        d.mean,
        d.quantile(50)
    );
    for (i, &c) in d.counts.iter().enumerate() {
        let (x0, x1) = (x_of(d.edges[i]), x_of(d.edges[i + 1]));
        let h = c as f64 / max_count as f64 * plot_h;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4c78a8" stroke="white"><title>[{:.1}, {:.1}): {c}</title></rect>"##,
            x0,
            base - h,
            x1 - x0,
            h,
            d.edges[i],
            d.edges[i + 1]
        );
    }
    axes(&mut s, base, max_count);
    for (label, value, colour) in [
        ("mean", d.mean, "#e45756"),
        ("median", d.quantile(50), "#54a24b"),
    ] {
        if value.is_finite() {
            let x = x_of(value);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{base}" stroke="{colour}" stroke-dasharray="5,4"/><text x="{x:.1}" y="{}" fill="{colour}" text-anchor="middle">{label}</text>"#,
                TOP - 6.0
            );
        }
    }
    svg::close(&mut s);
    s
}

/// The x axis (scores, ticks every 0.5) and the y axis (0 and the largest count).
fn axes(s: &mut String, base: f64, max_count: u64) {
    let area = PlotArea {
        left: LEFT,
        top: TOP,
        right: WIDTH - RIGHT,
        bottom: base,
    };
    svg::axis_lines(s, area);
    for tick in [-1.0, -0.5, 0.0, 0.5, 1.0] {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{base}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{tick:.1}</text>"#,
            base + 5.0,
            base + 20.0
        );
    }
    for (count, y) in [(0, base), (max_count, TOP)] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{count}</text>"#,
            LEFT - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">cosine similarity (label vs predict)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 10.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_bin_scaled_to_the_largest() {
        let d = Distribution::new(&[0.95, 0.96, 0.55]);
        let svg = histogram_svg(&d);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect x=").count(), d.counts.len());
        // The fullest bin (0.9..1.0, two scores) spans the whole plot height.
        assert!(
            svg.contains(&format!("height=\"{:.1}\"", HEIGHT - TOP - BOTTOM)),
            "{svg}"
        );
        assert!(svg.contains("3 pairs"));
        assert!(svg.contains(">median</text>"));
    }

    #[test]
    fn empty_scores_draw_axes_only() {
        let svg = histogram_svg(&Distribution::new(&[]));
        assert!(!svg.contains(">mean</text>"));
        assert!(svg.contains("0 pairs"));
    }
}
