//! The group runtime against a fake model: followers mirror every call in order, releases free
//! their copies, and a follower's failure comes back to the leader as an error (no hang).

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use super::*;
use crate::engine::{self, GenOptions, GenRequest, SamplingParams};
use crate::models::{Decoder, ForwardInput, LogitsAt};
use crate::score::choice::RowCache;
use crate::{Error, Result};

const VOCAB: usize = 11;

/// What a rank's fake model saw, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// A "model" whose logits depend only on the cached tokens, and which records every call.
struct Fake {
    log: Log,
    /// Fail the forward pass with this index (0-based) on this rank.
    fail_forward: Option<usize>,
    forwards: Mutex<usize>,
    device: Device,
}

struct FakeCache {
    rows: Vec<Vec<u32>>,
    log: Log,
}

impl Drop for FakeCache {
    fn drop(&mut self) {
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("drop {:?}", self.rows));
        }
    }
}

impl RowCache for FakeCache {
    fn seq_len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }
    fn bytes(&self) -> usize {
        self.rows.iter().map(|r| 4 * r.len()).sum()
    }
    fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        self.log.lock().unwrap().push(format!("select {rows:?}"));
        Ok(FakeCache {
            rows: rows.iter().map(|&r| self.rows[r].clone()).collect(),
            log: self.log.clone(),
        })
    }
}

impl Decoder for Fake {
    type Cache = FakeCache;
    fn new_cache(&self) -> FakeCache {
        FakeCache {
            rows: Vec::new(),
            log: self.log.clone(),
        }
    }
    fn forward(&self, input: &ForwardInput, cache: &mut FakeCache, at: LogitsAt) -> Result<Tensor> {
        let n = {
            let mut f = self.forwards.lock().unwrap();
            *f += 1;
            *f - 1
        };
        if self.fail_forward == Some(n) {
            return Err(Error::Unsupported(format!("fake failure in forward {n}")));
        }
        let tokens = input.tokens.to_vec2::<u32>()?;
        let mask = input
            .key_mask
            .as_ref()
            .map(|m| m.to_vec2::<u8>())
            .transpose()?;
        self.log
            .lock()
            .unwrap()
            .push(format!("forward {tokens:?} {mask:?} {at:?}"));
        if cache.rows.is_empty() {
            cache.rows = vec![Vec::new(); tokens.len()];
        }
        let mut logits = Vec::new();
        for (row, new) in cache.rows.iter_mut().zip(&tokens) {
            for (j, &t) in new.iter().enumerate() {
                row.push(t);
                if at == LogitsAt::All || j + 1 == new.len() {
                    let hot = row.iter().map(|&x| x as usize * 3 + 1).sum::<usize>() % VOCAB;
                    logits.extend((0..VOCAB).map(|v| if v == hot { 1.0f32 } else { 0.0 }));
                }
            }
        }
        let s = if at == LogitsAt::All {
            tokens[0].len()
        } else {
            1
        };
        Ok(Tensor::from_vec(
            logits,
            (tokens.len(), s, VOCAB),
            &self.device,
        )?)
    }
    fn retain_rows(&self, cache: &mut FakeCache, rows: &[usize]) -> Result<()> {
        self.log.lock().unwrap().push(format!("retain {rows:?}"));
        cache.rows = rows.iter().map(|&r| cache.rows[r].clone()).collect();
        Ok(())
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

/// Loads [`Fake`]s; fails loading a model whose path is "bad" on `fail_load_rank`.
#[derive(Clone)]
struct FakeLoader {
    logs: Vec<Log>,
    rank: usize,
    fail_forward: Option<(usize, usize)>,
    fail_load_rank: Option<usize>,
}

impl FakeLoader {
    fn model(&self) -> Fake {
        Fake {
            log: self.logs[self.rank].clone(),
            fail_forward: self
                .fail_forward
                .filter(|&(r, _)| r == self.rank)
                .map(|(_, n)| n),
            forwards: Mutex::new(0),
            device: Device::Cpu,
        }
    }
}

impl ShardLoader for FakeLoader {
    type Model = Fake;
    fn load(&mut self, spec: &LoadSpec) -> Result<Fake> {
        self.logs[self.rank]
            .lock()
            .unwrap()
            .push(format!("load {}", spec.model_path));
        if spec.model_path == "bad" && self.fail_load_rank == Some(self.rank) {
            return Err(Error::bad_file("bad", "no shard here"));
        }
        Ok(self.model())
    }
}

/// A group of `world` fake ranks: the leader, its loader (rank 0's) and the follower threads.
fn group(
    world: usize,
    fail_forward: Option<(usize, usize)>,
    fail_load_rank: Option<usize>,
) -> (
    TpLeader,
    FakeLoader,
    Vec<std::thread::JoinHandle<Result<()>>>,
) {
    let loader = FakeLoader {
        logs: (0..world).map(|_| Log::default()).collect(),
        rank: 0,
        fail_forward,
        fail_load_rank,
    };
    let template = loader.clone();
    let (leader, threads) = thread_group(world, &Device::Cpu, move |rank, _| FakeLoader {
        rank,
        ..template.clone()
    })
    .unwrap();
    (leader, loader, threads)
}

fn spec(path: &str) -> LoadSpec {
    LoadSpec {
        model_path: path.into(),
        adapter_paths: vec![],
        dtype: "f32".into(),
    }
}

fn load(leader: &TpLeader, loader: &FakeLoader, path: &str) -> Result<TpModel<Fake>> {
    let mut local = loader.clone();
    TpModel::load(Some(leader), &spec(path), || local.load(&spec(path)))
}

fn requests() -> Vec<GenRequest> {
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[4], &[5, 6, 7, 8, 9]];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenRequest {
            item_id: format!("i{i}"),
            prompt_ids: p.to_vec(),
            stop_ids: [7u32].into_iter().collect(),
            max_new_tokens: 4 + i,
            sampling: SamplingParams::greedy(),
            seed: 1,
        })
        .collect()
}

fn finish(leader: TpLeader, threads: Vec<std::thread::JoinHandle<Result<()>>>) {
    leader.shutdown().unwrap();
    for t in threads {
        t.join().unwrap().unwrap();
    }
}

#[test]
fn followers_mirror_generation_and_outputs_match_a_single_model() {
    let (leader, loader, threads) = group(3, None, None);
    let model = load(&leader, &loader, "m").unwrap();
    let opts = GenOptions {
        max_batch: 2,
        max_batch_tokens: 0,
    };
    let tp = engine::generate(&model, &requests(), &opts).unwrap();
    drop(model);
    finish(leader, threads);

    let solo_log = Log::default();
    let solo = TpModel::solo(Fake {
        log: solo_log.clone(),
        fail_forward: None,
        forwards: Mutex::new(0),
        device: Device::Cpu,
    });
    assert_eq!(engine::generate(&solo, &requests(), &opts).unwrap(), tp);
    drop(solo);
    let solo_log = solo_log.lock().unwrap().clone();
    assert!(
        solo_log.iter().any(|l| l.starts_with("retain")),
        "{solo_log:?}"
    );
    for (rank, log) in loader.logs.iter().enumerate() {
        let log = log.lock().unwrap();
        assert_eq!(log[0], "load m", "rank {rank}");
        // Every rank ran the same forward passes and row changes, in the same order, and freed
        // every cache (the followers when the next command, here Shutdown, came).
        let calls: Vec<&String> = log[1..].iter().filter(|l| !l.starts_with("drop")).collect();
        let solo_calls: Vec<&String> = solo_log.iter().filter(|l| !l.starts_with("drop")).collect();
        assert_eq!(calls, solo_calls, "rank {rank}");
        let drops = log.iter().filter(|l| l.starts_with("drop")).count();
        assert_eq!(drops, 2, "rank {rank}: one cache per batch of two");
    }
}

#[test]
fn shared_prefix_copies_are_mirrored() {
    let (leader, loader, threads) = group(2, None, None);
    let model = load(&leader, &loader, "m").unwrap();
    let mut prefix = model.new_cache();
    let one_row = ForwardInput {
        tokens: Tensor::new(&[[3u32, 4]], &Device::Cpu).unwrap(),
        positions: Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap(),
        key_mask: None,
    };
    model
        .forward(&one_row, &mut prefix, LogitsAt::Last)
        .unwrap();
    let mut batch = prefix.select_rows(&[0, 0]).unwrap();
    let two_rows = ForwardInput {
        tokens: Tensor::new(&[[5u32], [6]], &Device::Cpu).unwrap(),
        positions: Tensor::new(&[[2u32], [2]], &Device::Cpu).unwrap(),
        key_mask: None,
    };
    let leader_logits = model
        .forward(&two_rows, &mut batch, LogitsAt::Last)
        .unwrap();
    assert_eq!(leader_logits.dims(), &[2, 1, VOCAB]);
    assert_eq!(batch.seq_len(), 3);
    drop((batch, prefix, model));
    finish(leader, threads);
    // Calls in order; drops in any order (a follower frees what is left when it stops).
    let logs: Vec<Vec<String>> = loader
        .logs
        .iter()
        .map(|l| {
            let mut log = l.lock().unwrap().clone();
            log[4..].sort();
            log
        })
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert!(
        logs[1].contains(&"select [0, 0]".to_string()),
        "{:?}",
        logs[1]
    );
    assert!(logs[1].contains(&"drop [[3, 4, 5], [3, 4, 6]]".to_string()));
}

#[test]
fn a_follower_forward_error_fails_the_call_and_the_group_goes_on() {
    // Rank 2 fails its second forward pass (the first decode step).
    let (leader, loader, threads) = group(3, Some((2, 1)), None);
    let model = load(&leader, &loader, "m").unwrap();
    let opts = GenOptions::default();
    let e = engine::generate(&model, &requests(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor-parallel forward failed on rank 2"),
        "{e}"
    );
    assert!(e.contains("fake failure in forward 1"), "{e}");
    assert!(leader.broken().is_none());
    // The group is still in step: the next lease runs (rank 2's fake fails only once).
    let again = engine::generate(&model, &requests(), &opts).unwrap();
    assert_eq!(again.len(), 3);
    drop(model);
    finish(leader, threads);
}

#[test]
fn a_follower_load_error_fails_the_load_naming_the_rank() {
    let (leader, loader, threads) = group(2, None, Some(1));
    let e = load(&leader, &loader, "bad").err().unwrap().to_string();
    assert_eq!(
        e,
        "unsupported: tensor-parallel load failed on rank 1: bad: no shard here"
    );
    // A forward on the model rank 1 does not have would fail there, not hang: none exists on
    // the leader either, so the next load is what runs.
    let model = load(&leader, &loader, "m").unwrap();
    assert_eq!(
        engine::generate(&model, &requests(), &GenOptions::default())
            .unwrap()
            .len(),
        3
    );
    drop(model);
    finish(leader, threads);
}

#[test]
fn a_leader_forward_error_marks_the_group_unusable() {
    let (leader, loader, threads) = group(2, Some((0, 0)), None);
    let model = load(&leader, &loader, "m").unwrap();
    let e = engine::generate(&model, &requests(), &GenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 0 failed in a forward"), "{e}");
    assert!(leader.broken().is_some());
    let e = engine::generate(&model, &requests(), &GenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unusable"), "{e}");
    // Here (a fake without collectives) the follower finished its forward and waits in the
    // status round; the real worker exits the process instead of joining the threads.
    drop((model, threads));
}

/// The real decoder (the tiny f32 qwen2, 4 heads and 2 KV heads) in a group of two threads:
/// greedy generation gives the same tokens as one rank, and choice scoring with shared prefixes
/// (caches copied on every rank) the same probabilities within rounding (the row-parallel sums
/// add the ranks' parts in another order).
#[test]
fn a_real_model_in_a_group_of_two_generates_and_scores_as_one_rank() {
    use crate::models::load_causal_lm;
    use crate::score::choice::{ChoiceJob, PrefixCache, ScoreOptions, score_jobs};

    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2/model");
    let path = dir.to_str().unwrap();
    let load = |tp: Option<&TpLeader>| {
        let opts = shard_load_options(&Device::Cpu, "f32", tp.map(TpLeader::collective)).unwrap();
        TpModel::load(tp, &spec(path), || load_causal_lm(&dir, &[], &opts))
    };
    let (leader, threads) = causal_lm_thread_group(2, &Device::Cpu).unwrap();
    let group = load(Some(&leader)).unwrap();
    let solo = load(None).unwrap();

    let opts = GenOptions {
        max_batch: 2,
        max_batch_tokens: 0,
    };
    let reqs: Vec<GenRequest> = requests()
        .into_iter()
        .map(|mut r| {
            r.max_new_tokens = 6;
            r
        })
        .collect();
    assert_eq!(
        engine::generate(&group, &reqs, &opts).unwrap(),
        engine::generate(&solo, &reqs, &opts).unwrap()
    );

    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 250).collect();
    let jobs: Vec<ChoiceJob> = (0..3)
        .map(|j| {
            let mut ids = prompt.clone();
            ids.extend((0..3 + j).map(|i| (i * 11 + j * 7) as u32 % 250));
            ChoiceJob {
                item_id: format!("q{j}"),
                prompt_ids: ids,
                prefix_ends: vec![8, 20],
                choice_ids: vec![10, 20, 30, 40],
            }
        })
        .collect();
    let score = |model: &TpModel<crate::models::LoadedModel>| {
        let mut out = vec![Vec::new(); jobs.len()];
        let mut prefixes = PrefixCache::default();
        let o = ScoreOptions {
            max_batch: 2,
            max_batch_tokens: 0,
        };
        score_jobs(model, &jobs, &o, &mut prefixes, &mut |i, p| out[i] = p).unwrap();
        // Again from the kept prefix (a hit: no recomputation, a copy on every rank).
        score_jobs(model, &jobs, &o, &mut prefixes, &mut |i, p| {
            assert_eq!(out[i], p)
        })
        .unwrap();
        out
    };
    for (g, s) in score(&group).iter().zip(score(&solo)) {
        for (a, b) in g.iter().zip(&s) {
            assert!((a - b).abs() < 1e-5, "{g:?} vs {s:?}");
        }
    }
    drop(group);
    finish(leader, threads);
}
