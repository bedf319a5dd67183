//! The additive attention mask: causal, padding (from the caller's key mask) and the optional
//! sliding window, built once per forward pass and shared by every layer.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Added to the scores of keys a query must not see. Finite (as transformers' `finfo.min`), so a
/// padding query that sees no key at all gets a uniform, not NaN, distribution.
const MASKED: f32 = f32::MIN;

/// Builds the `(b, 1, 1, s, past + s)` f32 mask (`(1, 1, 1, s, past + s)` off the CPU when no row
/// has padding) for `s` new queries after `past` cached
/// positions, or `None` when nothing needs masking (one query, no padding, window not reached).
/// `key_mask` is `(b, past + s)`, non-zero where a key may be attended to.
pub fn attention_mask(
    b: usize,
    s: usize,
    past: usize,
    key_mask: Option<&Tensor>,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let t = past + s;
    let keys: Option<Vec<Vec<u8>>> = match key_mask {
        None => None,
        Some(m) => {
            if m.dims2()? != (b, t) {
                return Err(Error::Unsupported(format!(
                    "key_mask shape {:?}, expected ({b}, {t}) (cached + new positions)",
                    m.dims()
                )));
            }
            let rows = m.to_dtype(candle_core::DType::U8)?.to_vec2::<u8>()?;
            // A mask without padding is the same as none: skip it for the common decode step.
            if rows.iter().all(|r| r.iter().all(|&k| k != 0)) {
                None
            } else {
                Some(rows)
            }
        }
    };
    let window_bites = window.is_some_and(|w| t > w);
    if s == 1 && keys.is_none() && !window_bites {
        return Ok(None);
    }
    // Without padding every row's mask is the same: off the CPU one row is built and broadcast
    // over the batch (the host loop and the upload shrink b-fold). The CPU attention reads one
    // mask per row (attention.rs), so there the rows stay.
    let rows = if keys.is_none() && !device.is_cpu() {
        1
    } else {
        b
    };
    let mut mask = vec![0f32; rows * s * t];
    for (r, row) in mask.chunks_mut(s * t).enumerate() {
        for (i, q) in row.chunks_mut(t).enumerate() {
            let qi = past + i;
            for (j, m) in q.iter_mut().enumerate() {
                let visible = j <= qi
                    && keys.as_ref().is_none_or(|k| k[r][j] != 0)
                    && window.is_none_or(|w| qi - j < w);
                if !visible {
                    *m = MASKED;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(mask, (rows, 1, 1, s, t), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(m: &Tensor) -> Vec<Vec<bool>> {
        let (b, _, _, s, t) = m.dims5().unwrap();
        let v = m.reshape((b * s, t)).unwrap().to_vec2::<f32>().unwrap();
        v.into_iter()
            .map(|r| r.into_iter().map(|x| x == 0.0).collect())
            .collect()
    }

    #[test]
    fn causal_padding_and_window_combine() {
        let dev = Device::Cpu;
        let km = Tensor::new(&[[0u8, 1, 1, 1]], &dev).unwrap();
        let m = attention_mask(1, 4, 0, Some(&km), Some(2), &dev)
            .unwrap()
            .unwrap();
        let v = rows(&m);
        assert_eq!(v[0], [false, false, false, false]); // padding query sees nothing
        assert_eq!(v[1], [false, true, false, false]);
        assert_eq!(v[2], [false, true, true, false]);
        assert_eq!(v[3], [false, false, true, true]); // window of 2
    }

    #[test]
    fn single_step_without_padding_needs_no_mask() {
        let dev = Device::Cpu;
        let km = Tensor::new(&[[1u8, 1, 1]], &dev).unwrap();
        assert!(
            attention_mask(1, 1, 2, Some(&km), None, &dev)
                .unwrap()
                .is_none()
        );
        assert!(
            attention_mask(1, 1, 2, None, Some(2), &dev)
                .unwrap()
                .is_some()
        );
    }
}
