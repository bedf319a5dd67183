//! The histogram of the step-2 scores as a PNG raster, for viewers that do not show SVG: the same
//! geometry as [`super::svg`] (bars, axes, ticks, dashed mean and median lines), without text
//! (the numbers are in the SVG and in sem_sim_distribution.json).

use super::distribution::Distribution;
use super::svg::{BOTTOM, HEIGHT, LEFT, RIGHT, TOP, x_of};
use crate::output::svg::FIGURE_WIDTH;

/// Palette indices of the raster (an indexed-colour PNG, one byte per pixel).
const BACKGROUND: u8 = 0;
const BAR: u8 = 1;
const AXIS: u8 = 2;
const MEAN: u8 = 3;
const MEDIAN: u8 = 4;
/// RGB of each palette index: white, the SVG's bar blue, black, its mean red and median green.
const PALETTE: [u8; 15] = [
    0xff, 0xff, 0xff, 0x4c, 0x78, 0xa8, 0x00, 0x00, 0x00, 0xe4, 0x57, 0x56, 0x54, 0xa2, 0x4b,
];

/// A raster of palette indices, row by row.
struct Raster {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Raster {
    fn new(width: usize, height: usize) -> Self {
        Raster {
            width,
            height,
            pixels: vec![BACKGROUND; width * height],
        }
    }

    /// Fills the pixels whose centres lie in [x0, x1) × [y0, y1).
    fn fill(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: u8) {
        let clamp = |v: f64, max: usize| (v.round().max(0.0) as usize).min(max);
        let (c0, c1) = (clamp(x0, self.width), clamp(x1, self.width));
        let (r0, r1) = (clamp(y0, self.height), clamp(y1, self.height));
        for row in r0..r1 {
            self.pixels[row * self.width + c0..row * self.width + c1].fill(colour);
        }
    }
}

/// The PNG file for `d`.
pub fn histogram_png(d: &Distribution) -> Result<Vec<u8>, png::EncodingError> {
    let (width, height) = (FIGURE_WIDTH as usize, HEIGHT as usize);
    let mut r = Raster::new(width, height);
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = TOP + plot_h;
    let max_count = d.counts.iter().copied().max().unwrap_or(0).max(1);
    for (i, &c) in d.counts.iter().enumerate() {
        let h = c as f64 / max_count as f64 * plot_h;
        // One background pixel between bars, as the SVG's white stroke.
        let (x0, x1) = (x_of(d.edges[i]) + 1.0, x_of(d.edges[i + 1]));
        r.fill((x0, base - h), (x1, base), BAR);
    }
    let right = FIGURE_WIDTH - RIGHT;
    r.fill((LEFT - 1.0, base), (right, base + 1.0), AXIS);
    r.fill((LEFT - 1.0, TOP), (LEFT, base + 1.0), AXIS);
    for tick in [-1.0, -0.5, 0.0, 0.5, 1.0] {
        let x = x_of(tick);
        r.fill((x - 0.5, base), (x + 0.5, base + 5.0), AXIS);
    }
    for (value, colour) in [(d.mean, MEAN), (d.quantile(50), MEDIAN)] {
        if value.is_finite() {
            let x = x_of(value);
            // Dashes of 5 pixels, gaps of 4, as the SVG's `stroke-dasharray="5,4"`.
            let mut y = TOP;
            while y < base {
                r.fill((x - 1.0, y), (x + 1.0, (y + 5.0).min(base)), colour);
                y += 9.0;
            }
        }
    }
    encode(&r)
}

fn encode(r: &Raster) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, r.width as u32, r.height as u32);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(PALETTE.to_vec());
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&r.pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `bytes`: (width, height, palette indices).
    fn decode(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Indexed);
        buf.truncate(info.buffer_size());
        (info.width as usize, info.height as usize, buf)
    }

    #[test]
    fn bars_are_drawn_where_the_scores_are_and_scaled_to_the_largest() {
        let d = Distribution::new(&[0.95, 0.96, 0.55, -0.45]);
        let (w, h, px) = decode(&histogram_png(&d).unwrap());
        assert_eq!((w, h), (FIGURE_WIDTH as usize, HEIGHT as usize));
        let at = |x: f64, y: f64| px[y as usize * w + x as usize];
        let base = HEIGHT - BOTTOM;
        // The fullest bin (0.9..1.0, two scores) reaches the top; the one-score bins half way.
        assert_eq!(at(x_of(0.93), TOP + 1.0), BAR);
        assert_eq!(at(x_of(0.53), TOP + 1.0), BACKGROUND);
        let half = base - (base - TOP) / 2.0;
        assert_eq!(at(x_of(0.53), half + 1.0), BAR);
        assert_eq!(at(x_of(-0.47), half + 1.0), BAR);
        // An empty bin is background down to the axis.
        assert_eq!(at(x_of(0.13), base - 1.0), BACKGROUND);
        assert_eq!(at(x_of(0.13), base), AXIS);
        // The mean line (0.5025) is dashed, in its colour.
        let x = x_of(d.mean);
        assert_eq!(at(x, TOP + 1.0), MEAN);
        assert_eq!(at(x, TOP + 6.0), BACKGROUND);
    }

    #[test]
    fn no_scores_give_axes_only() {
        let (w, _, px) = decode(&histogram_png(&Distribution::new(&[])).unwrap());
        assert!(!px.contains(&BAR) && !px.contains(&MEAN));
        assert_eq!(px[(HEIGHT - BOTTOM) as usize * w + 100], AXIS);
    }
}
