//! The frame every standalone SVG figure shares (step 2's score histogram, the report's line and
//! bar charts): one width, so the figures line up in `report.html`; the document head with a white
//! background; the black x and y axis lines; and the closing tag.

use std::fmt::Write;

/// Width in pixels of every figure.
pub const FIGURE_WIDTH: f64 = 720.0;

/// Starts a figure `height` pixels tall: the `<svg>` element (sans-serif 12 px text) and a white
/// background. With `label` (already escaped) it is marked as an image with that accessible name.
pub fn open(out: &mut String, height: f64, label: Option<&str>) {
    let w = FIGURE_WIDTH;
    let aria = label.map_or(String::new(), |l| {
        format!(r#" role="img" aria-label="{l}""#)
    });
    // `write!` into a String cannot fail.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12"{aria}>"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{height}" fill="white"/>"#);
}

/// The plot area's edges in pixels: the axes run along `left` (y axis, from `top` down) and
/// `bottom` (x axis, to `right`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotArea {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

/// The black x and y axis lines of `area`, on one line.
pub fn axis_lines(out: &mut String, area: PlotArea) {
    let PlotArea {
        left,
        top,
        right,
        bottom,
    } = area;
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#
    );
}

/// Ends the figure.
pub fn close(out: &mut String) {
    out.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_with_and_without_label() {
        let mut plain = String::new();
        open(&mut plain, 400.0, None);
        close(&mut plain);
        assert_eq!(
            plain,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"400\" viewBox=\"0 0 720 400\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"720\" height=\"400\" fill=\"white\"/>\n</svg>\n"
        );
        let mut labelled = String::new();
        open(&mut labelled, 318.5, Some("a &amp; b"));
        assert!(labelled.contains("height=\"318.5\" viewBox=\"0 0 720 318.5\""));
        assert!(labelled.contains(" role=\"img\" aria-label=\"a &amp; b\">"));
    }

    #[test]
    fn axes_meet_at_the_bottom_left_corner() {
        let mut s = String::new();
        let area = PlotArea {
            left: 60.0,
            top: 50.0,
            right: 700.0,
            bottom: 350.0,
        };
        axis_lines(&mut s, area);
        assert_eq!(
            s,
            "<line x1=\"60\" y1=\"350\" x2=\"700\" y2=\"350\" stroke=\"black\"/><line x1=\"60\" y1=\"50\" x2=\"60\" y2=\"350\" stroke=\"black\"/>\n"
        );
    }
}
