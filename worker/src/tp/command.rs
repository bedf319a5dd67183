//! The commands a tensor-parallel leader broadcasts to its followers, and their binary encoding.
//!
//! A message is one [`Message`]: the caches and models the leader released since its last
//! message (freed by the followers before anything else), then one [`Command`]. The encoding is
//! hand-written and small: a version byte, little-endian integers, length-prefixed strings and
//! arrays. Token ids and positions travel as `u32`, the key mask as bytes; a prefill of 32 rows
//! of 256 tokens is about 40 KB.

use crate::models::LogitsAt;
use crate::{Error, Result};

/// Changes whenever the encoding does: leader and followers are the same binary, so a mismatch
/// is a bug, but it is cheap to say so instead of misreading bytes.
const VERSION: u8 = 1;

/// Which model to load on every rank (each loads its own shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// HF folder or GGUF file.
    pub model_path: String,
    /// PEFT adapters merged in order (before sharding).
    pub adapter_paths: Vec<String>,
    /// `auto`, `f32`, `f16`, `bf16` (as in `pb::ModelSpec::dtype`).
    pub dtype: String,
}

/// Something the leader no longer holds, so the followers free their copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Cache(u64),
    Model(u64),
}

/// One forward pass of a left-padded batch (see [`crate::models::ForwardInput`]), as host data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardCmd {
    pub model: u64,
    pub cache: u64,
    pub batch: usize,
    pub seq: usize,
    /// `batch x seq` token ids, row-major.
    pub tokens: Vec<u32>,
    /// `batch x seq` positions.
    pub positions: Vec<u32>,
    /// `(keys, batch x keys bytes)`, where keys = past + seq; `None`: no padding anywhere.
    pub key_mask: Option<(usize, Vec<u8>)>,
    pub at: LogitsAt,
}

/// What every follower does next, in step with the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Load a model under the id `model` (each rank its shard).
    Load {
        model: u64,
        spec: LoadSpec,
    },
    Forward(ForwardCmd),
    /// `Decoder::retain_rows` on a cache.
    RetainRows {
        model: u64,
        cache: u64,
        rows: Vec<u32>,
    },
    /// A new cache `dst` holding `rows` of `src` (a shared prefix expanded into a batch).
    SelectRows {
        model: u64,
        src: u64,
        dst: u64,
        rows: Vec<u32>,
    },
    /// Only apply the releases (frees follower memory without other work).
    Sync,
    /// Leave the follower loop.
    Shutdown,
}

impl Command {
    /// Whether the ranks agree that they are ready before the command runs: a forward pass calls
    /// collectives inside the model, which a rank that failed to prepare would never join.
    pub fn needs_ready_round(&self) -> bool {
        matches!(self, Command::Forward(_))
    }

    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Load { .. } => "load",
            Command::Forward(_) => "forward",
            Command::RetainRows { .. } => "retain_rows",
            Command::SelectRows { .. } => "select_rows",
            Command::Sync => "sync",
            Command::Shutdown => "shutdown",
        }
    }
}

/// What the leader broadcasts: releases first, then the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub releases: Vec<Release>,
    pub command: Command,
}

mod tag {
    pub const LOAD: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const RETAIN: u8 = 3;
    pub const SELECT: u8 = 4;
    pub const SYNC: u8 = 5;
    pub const SHUTDOWN: u8 = 6;
    pub const CACHE: u8 = 0;
    pub const MODEL: u8 = 1;
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(vec![VERSION]);
        w.u32(self.releases.len() as u32);
        for r in &self.releases {
            match r {
                Release::Cache(id) => w.u8(tag::CACHE).u64(*id),
                Release::Model(id) => w.u8(tag::MODEL).u64(*id),
            };
        }
        match &self.command {
            Command::Load { model, spec } => {
                w.u8(tag::LOAD).u64(*model).str(&spec.model_path);
                w.u32(spec.adapter_paths.len() as u32);
                spec.adapter_paths.iter().for_each(|a| {
                    w.str(a);
                });
                w.str(&spec.dtype);
            }
            Command::Forward(f) => {
                w.u8(tag::FORWARD).u64(f.model).u64(f.cache);
                w.u32(f.batch as u32).u32(f.seq as u32);
                w.u32s(&f.tokens).u32s(&f.positions);
                match &f.key_mask {
                    None => w.u8(0),
                    Some((keys, mask)) => w.u8(1).u32(*keys as u32).bytes(mask),
                };
                w.u8(matches!(f.at, LogitsAt::Last) as u8);
            }
            Command::RetainRows { model, cache, rows } => {
                w.u8(tag::RETAIN).u64(*model).u64(*cache).u32s(rows);
            }
            Command::SelectRows {
                model,
                src,
                dst,
                rows,
            } => {
                w.u8(tag::SELECT).u64(*model).u64(*src).u64(*dst).u32s(rows);
            }
            Command::Sync => {
                w.u8(tag::SYNC);
            }
            Command::Shutdown => {
                w.u8(tag::SHUTDOWN);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(bad(format!(
                "version {version}, this binary speaks {VERSION} (leader and followers must be the \
                 same build)"
            )));
        }
        let n = r.u32()? as usize;
        let mut releases = Vec::with_capacity(n.min(bytes.len()));
        for _ in 0..n {
            releases.push(match r.u8()? {
                tag::CACHE => Release::Cache(r.u64()?),
                tag::MODEL => Release::Model(r.u64()?),
                other => return Err(bad(format!("release kind {other}"))),
            });
        }
        let command = match r.u8()? {
            tag::LOAD => {
                let model = r.u64()?;
                let model_path = r.str()?;
                let n = r.u32()? as usize;
                let adapter_paths = (0..n).map(|_| r.str()).collect::<Result<_>>()?;
                let dtype = r.str()?;
                Command::Load {
                    model,
                    spec: LoadSpec {
                        model_path,
                        adapter_paths,
                        dtype,
                    },
                }
            }
            tag::FORWARD => Command::Forward(read_forward(&mut r)?),
            tag::RETAIN => Command::RetainRows {
                model: r.u64()?,
                cache: r.u64()?,
                rows: r.u32s()?,
            },
            tag::SELECT => Command::SelectRows {
                model: r.u64()?,
                src: r.u64()?,
                dst: r.u64()?,
                rows: r.u32s()?,
            },
            tag::SYNC => Command::Sync,
            tag::SHUTDOWN => Command::Shutdown,
            other => return Err(bad(format!("command tag {other}"))),
        };
        if r.at != bytes.len() {
            return Err(bad(format!(
                "{} bytes left after the {} command",
                bytes.len() - r.at,
                command.name()
            )));
        }
        Ok(Message { releases, command })
    }
}

fn read_forward(r: &mut Reader) -> Result<ForwardCmd> {
    let (model, cache) = (r.u64()?, r.u64()?);
    let (batch, seq) = (r.u32()? as usize, r.u32()? as usize);
    let tokens = r.u32s()?;
    let positions = r.u32s()?;
    let key_mask = match r.u8()? {
        0 => None,
        _ => Some((r.u32()? as usize, r.bytes()?)),
    };
    let at = if r.u8()? == 1 {
        LogitsAt::Last
    } else {
        LogitsAt::All
    };
    let cells = batch * seq;
    if tokens.len() != cells || positions.len() != cells {
        return Err(bad(format!(
            "forward of {batch}x{seq} with {} tokens and {} positions",
            tokens.len(),
            positions.len()
        )));
    }
    if let Some((keys, mask)) = &key_mask
        && (mask.len() != batch * keys || *keys < seq)
    {
        return Err(bad(format!(
            "forward of {batch}x{seq} with a key mask of {} bytes over {keys} keys",
            mask.len()
        )));
    }
    Ok(ForwardCmd {
        model,
        cache,
        batch,
        seq,
        tokens,
        positions,
        key_mask,
        at,
    })
}

fn bad(what: String) -> Error {
    Error::Unsupported(format!("malformed tensor-parallel command: {what}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.u32(v.len() as u32);
        v.iter()
            .for_each(|x| self.0.extend_from_slice(&x.to_le_bytes()));
        self
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "{n} bytes wanted at offset {} of {}",
                    self.at,
                    self.bytes.len()
                ))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("a string that is not UTF-8".into()))
    }
    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.u32()? as usize;
        let raw = self.take(n.checked_mul(4).ok_or_else(|| bad("array length".into()))?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> ForwardCmd {
        ForwardCmd {
            model: 7,
            cache: u64::MAX - 1,
            batch: 2,
            seq: 3,
            tokens: vec![0, 1, u32::MAX, 3, 4, 5],
            positions: vec![0, 0, 1, 0, 1, 2],
            key_mask: Some((4, vec![1, 0, 1, 1, 1, 1, 1, 1])),
            at: LogitsAt::Last,
        }
    }

    fn all_commands() -> Vec<Command> {
        vec![
            Command::Load {
                model: 1,
                spec: LoadSpec {
                    model_path: "/m/qwen ü".into(),
                    adapter_paths: vec!["a".into(), String::new()],
                    dtype: "bf16".into(),
                },
            },
            Command::Forward(forward()),
            Command::Forward(ForwardCmd {
                key_mask: None,
                at: LogitsAt::All,
                ..forward()
            }),
            Command::RetainRows {
                model: 1,
                cache: 2,
                rows: vec![3, 0, 0],
            },
            Command::SelectRows {
                model: 1,
                src: 2,
                dst: 9,
                rows: vec![],
            },
            Command::Sync,
            Command::Shutdown,
        ]
    }

    #[test]
    fn every_command_round_trips_with_releases() {
        for command in all_commands() {
            let msg = Message {
                releases: vec![Release::Cache(3), Release::Model(u64::MAX)],
                command,
            };
            let bytes = msg.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn a_decode_step_is_small() {
        let step = Message {
            releases: vec![],
            command: Command::Forward(ForwardCmd {
                batch: 32,
                seq: 1,
                tokens: vec![5; 32],
                positions: vec![300; 32],
                key_mask: Some((301, vec![1; 32 * 301])),
                ..forward()
            }),
        };
        // Header 6, ids 16, shape 8, two arrays 2 x (4 + 128), mask 1 + 4 + 4 + 9632, at 1.
        assert_eq!(step.encode().len(), 6 + 16 + 8 + 264 + 9641 + 1);
    }

    #[test]
    fn truncated_or_corrupt_messages_are_errors_not_panics() {
        for command in all_commands() {
            let bytes = Message {
                releases: vec![Release::Cache(1)],
                command,
            }
            .encode();
            for cut in 0..bytes.len() {
                assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let e = Message::decode(&longer).unwrap_err().to_string();
            assert!(e.contains("1 bytes left"), "{e}");
        }
        let e = Message::decode(&[9]).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        let e = Message::decode(&[VERSION, 0, 0, 0, 0, 42]).unwrap_err();
        assert!(e.to_string().contains("command tag 42"), "{e}");
    }

    #[test]
    fn inconsistent_forward_shapes_are_refused() {
        let mut f = forward();
        f.tokens.pop();
        let bytes = Message {
            releases: vec![],
            command: Command::Forward(f),
        }
        .encode();
        let e = Message::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("forward of 2x3 with 5 tokens"), "{e}");
        let mut f = forward();
        f.key_mask = Some((2, vec![1; 4]));
        let bytes = Message {
            releases: vec![],
            command: Command::Forward(f),
        }
        .encode();
        assert!(Message::decode(&bytes).is_err());
    }
}
