//! The Pooling module of sentence-transformers: token embeddings `(batch, seq, hidden)` and the
//! attention mask to one vector per text. Several modes concatenate in sentence-transformers'
//! order: CLS, max, mean, mean-sqrt-len, last token.

use std::path::Path;

use candle_core::{D, DType, Tensor};
use serde_json::Value;

use crate::tokenize::config::read_json_file;
use crate::{Error, Result};

/// One pooling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over the real tokens.
    Max,
    /// The mean over the real tokens.
    Mean,
    /// The sum over the real tokens divided by the square root of their number.
    MeanSqrtLen,
    /// The last real token.
    LastToken,
}

/// A Pooling module: its modes in output order and the dimension it expects.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooling {
    /// The modes, in the order their vectors are concatenated.
    pub modes: Vec<PoolingMode>,
    /// `word_embedding_dimension`: the hidden size of the encoder.
    pub word_embedding_dimension: usize,
}

/// `config.json` keys of each mode, in sentence-transformers' concatenation order.
const MODE_KEYS: [(&str, Option<PoolingMode>); 6] = [
    ("pooling_mode_cls_token", Some(PoolingMode::Cls)),
    ("pooling_mode_max_tokens", Some(PoolingMode::Max)),
    ("pooling_mode_mean_tokens", Some(PoolingMode::Mean)),
    (
        "pooling_mode_mean_sqrt_len_tokens",
        Some(PoolingMode::MeanSqrtLen),
    ),
    ("pooling_mode_weightedmean_tokens", None),
    ("pooling_mode_lasttoken", Some(PoolingMode::LastToken)),
];

impl Pooling {
    /// Reads the Pooling module's `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let json = read_json_file(path)?;
        let word_embedding_dimension = json
            .get("word_embedding_dimension")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::bad_file(path, "missing integer `word_embedding_dimension`"))?
            as usize;
        let mut modes = Vec::new();
        for (key, mode) in MODE_KEYS {
            let on = match json.get(key) {
                None | Some(Value::Null) => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::bad_file(path, format!("`{key}` must be true or false"))
                })?,
            };
            match (on, mode) {
                (false, _) => {}
                (true, Some(mode)) => modes.push(mode),
                (true, None) => {
                    return Err(Error::Unsupported(format!(
                        "{}: `{key}` (weighted-mean pooling) is not supported",
                        path.display()
                    )));
                }
            }
        }
        if modes.is_empty() {
            return Err(Error::bad_file(
                path,
                "no pooling mode is set (pooling_mode_cls_token, pooling_mode_mean_tokens, ...)",
            ));
        }
        Ok(Self {
            modes,
            word_embedding_dimension,
        })
    }

    /// The length of a pooled vector.
    pub fn output_dim(&self) -> usize {
        self.modes.len() * self.word_embedding_dimension
    }

    /// Pools `tokens` `(batch, seq, hidden)` f32 whose rows have `lens[i]` real tokens (right
    /// padded; `mask` is `(batch, seq)` f32 of ones and zeros). Returns `(batch, output_dim)`.
    pub fn forward(&self, tokens: &Tensor, mask: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let mask3 = mask.unsqueeze(D::Minus1)?;
        let mut parts = Vec::with_capacity(self.modes.len());
        for mode in &self.modes {
            let v = match mode {
                PoolingMode::Cls => tokens.narrow(1, 0, 1)?.squeeze(1)?,
                PoolingMode::Max => {
                    // As sentence-transformers: padding is set to -1e9 before the maximum.
                    let fill = ((mask3.ones_like()? - &mask3)? * -1e9)?;
                    tokens.broadcast_mul(&mask3)?.broadcast_add(&fill)?.max(1)?
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let sum = tokens.broadcast_mul(&mask3)?.sum(1)?;
                    let count = mask3.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                    let denom = if *mode == PoolingMode::Mean {
                        count
                    } else {
                        count.sqrt()?
                    };
                    sum.broadcast_div(&denom)?
                }
                PoolingMode::LastToken => {
                    let rows = lens
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| tokens.get(i)?.get(n.saturating_sub(1)))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::stack(&rows, 0)?
                }
            };
            parts.push(v.to_dtype(DType::F32)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn pooling(modes: Vec<PoolingMode>) -> Pooling {
        Pooling {
            modes,
            word_embedding_dimension: 2,
        }
    }

    fn pool(modes: Vec<PoolingMode>) -> Vec<Vec<f32>> {
        // Row 0: three real tokens; row 1: one real token and two of padding.
        let tokens = Tensor::new(
            &[
                [[1f32, -2.], [3., 4.], [5., -6.]],
                [[7., 8.], [100., 100.], [100., 100.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 0., 0.]], &Device::Cpu).unwrap();
        pooling(modes)
            .forward(&tokens, &mask, &[3, 1])
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn each_mode_ignores_padding() {
        assert_eq!(
            pool(vec![PoolingMode::Cls]),
            vec![vec![1., -2.], vec![7., 8.]]
        );
        assert_eq!(
            pool(vec![PoolingMode::Max]),
            vec![vec![5., 4.], vec![7., 8.]]
        );
        assert_eq!(
            pool(vec![PoolingMode::Mean]),
            vec![vec![3., -4. / 3.], vec![7., 8.]]
        );
        let s3 = 3f32.sqrt();
        assert_eq!(
            pool(vec![PoolingMode::MeanSqrtLen]),
            vec![vec![9. / s3, -4. / s3], vec![7., 8.]]
        );
        assert_eq!(
            pool(vec![PoolingMode::LastToken]),
            vec![vec![5., -6.], vec![7., 8.]]
        );
    }

    #[test]
    fn modes_concatenate_in_order() {
        let got = pool(vec![PoolingMode::Cls, PoolingMode::LastToken]);
        assert_eq!(got[0], vec![1., -2., 5., -6.]);
    }

    #[test]
    fn config_modes_and_weighted_mean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"word_embedding_dimension": 4, "pooling_mode_lasttoken": true, "pooling_mode_cls_token": true}"#,
        )
        .unwrap();
        let p = Pooling::read(&path).unwrap();
        assert_eq!(p.modes, vec![PoolingMode::Cls, PoolingMode::LastToken]);
        assert_eq!(p.output_dim(), 8);
        std::fs::write(
            &path,
            r#"{"word_embedding_dimension": 4, "pooling_mode_weightedmean_tokens": true}"#,
        )
        .unwrap();
        let err = Pooling::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("weighted-mean pooling is not supported") || err.contains("weighted-mean"),
            "{err}"
        );
        std::fs::write(&path, r#"{"word_embedding_dimension": 4}"#).unwrap();
        assert!(
            Pooling::read(&path)
                .unwrap_err()
                .to_string()
                .contains("no pooling mode")
        );
    }
}
