//! [`LocalCollective`]: ranks as threads of one process, exchanging f32 vectors through a
//! mutex and a condition variable. Each operation is a round: every rank deposits its input,
//! the last to arrive combines them (in rank order, so the result does not depend on arrival
//! order) and wakes the others, who read the shared result.
//!
//! A rank that fails or panics would leave the others waiting forever for its deposit: a rank run
//! through [`LocalCollective::run_rank`] stops the group instead, and every round then fails at
//! once on every rank, naming the rank and its error.

use std::sync::{Arc, Condvar, Mutex};

use candle_core::Tensor;

use super::Collective;
use crate::{Error, Result};

/// What one round combines: the rank-ordered inputs into the result every rank gets.
type Combine = fn(&[Vec<f32>], usize) -> Vec<f32>;

#[derive(Debug, Default)]
struct State {
    /// Rounds completed so far; a waiting rank watches it change.
    generation: u64,
    inputs: Vec<Option<Vec<f32>>>,
    arrived: usize,
    result: Arc<Vec<f32>>,
    /// Why the group stopped (a rank failed or panicked); every round fails from then on.
    stopped: Option<String>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    done: Condvar,
    world: usize,
}

/// One rank of an in-process group (see [`LocalCollective::group`]).
#[derive(Debug, Clone)]
pub struct LocalCollective {
    shared: Arc<Shared>,
    rank: usize,
}

impl LocalCollective {
    /// The `world` ranks of a new group, rank `i` at index `i`; move each to its own thread.
    pub fn group(world: usize) -> Vec<LocalCollective> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                inputs: vec![None; world],
                ..State::default()
            }),
            done: Condvar::new(),
            world,
        });
        (0..world)
            .map(|rank| LocalCollective {
                shared: shared.clone(),
                rank,
            })
            .collect()
    }

    /// Runs this rank's work `f`; if it fails or panics, stops the group so that the other ranks'
    /// rounds fail instead of waiting for this one forever.
    pub fn run_rank<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        struct StopOnPanic<'a>(&'a LocalCollective);
        impl Drop for StopOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.stop(format!("rank {} panicked", self.0.rank));
                }
            }
        }
        let _guard = StopOnPanic(self);
        let out = f(self);
        if let Err(e) = &out {
            self.stop(format!("rank {} failed: {e}", self.rank));
        }
        out
    }

    /// Stops the group (the first reason is kept) and wakes every waiting rank.
    fn stop(&self, why: String) {
        let mut st = self.lock();
        st.stopped.get_or_insert(why);
        self.shared.done.notify_all();
    }

    /// The state, also after a rank panicked while holding it (every update leaves it whole).
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One round: deposits `data`, waits for every rank, returns the combined result.
    fn round(&self, data: Vec<f32>, root: usize, combine: Combine) -> Result<Arc<Vec<f32>>> {
        let mut st = self.lock();
        let stopped = |why: &str| Error::GroupStopped(why.to_string());
        if let Some(why) = &st.stopped {
            return Err(stopped(why));
        }
        let entered = st.generation;
        st.inputs[self.rank] = Some(data);
        st.arrived += 1;
        if st.arrived == self.shared.world {
            let inputs: Vec<Vec<f32>> = st.inputs.iter_mut().filter_map(Option::take).collect();
            st.result = Arc::new(combine(&inputs, root));
            st.arrived = 0;
            st.generation += 1;
            self.shared.done.notify_all();
        } else {
            while st.generation == entered {
                if let Some(why) = &st.stopped {
                    return Err(stopped(why));
                }
                st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        Ok(st.result.clone())
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.shared.world {
            return Err(Error::Unsupported(format!(
                "broadcast from rank {root} in a group of {}",
                self.shared.world
            )));
        }
        Ok(())
    }

    fn tensor_round(&self, t: &Tensor, root: usize, combine: Combine) -> Result<Tensor> {
        let data: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let n = data.len();
        let out = self.round(data, root, combine)?;
        if out.len() != n {
            return Err(Error::Unsupported(format!(
                "collective: rank {} passed {n} elements, the group combined {}",
                self.rank,
                out.len()
            )));
        }
        Ok(Tensor::from_slice(&out, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}

fn sum_in_rank_order(inputs: &[Vec<f32>], _root: usize) -> Vec<f32> {
    let mut acc = inputs[0].clone();
    for other in &inputs[1..] {
        for (a, b) in acc.iter_mut().zip(other) {
            *a += b;
        }
    }
    acc
}

fn take_root(inputs: &[Vec<f32>], root: usize) -> Vec<f32> {
    inputs[root].clone()
}

fn nothing(_inputs: &[Vec<f32>], _root: usize) -> Vec<f32> {
    Vec::new()
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.tensor_round(t, 0, sum_in_rank_order)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.check_root(root)?;
        self.tensor_round(t, root, take_root)
    }

    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        self.check_root(root)?;
        // Bytes travel as f32 values (exact for 0..=255): one kind of round for every operation.
        let data = if self.rank == root {
            bytes.iter().map(|&b| f32::from(b)).collect()
        } else {
            Vec::new()
        };
        let out = self.round(data, root, take_root)?;
        Ok(out.iter().map(|&v| v as u8).collect())
    }

    fn barrier(&self) -> Result<()> {
        self.round(Vec::new(), 0, nothing).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn three_ranks_sum_broadcast_and_repeat() {
        let handles: Vec<_> = LocalCollective::group(3)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let mut sums = Vec::new();
                    for round in 0..20 {
                        let v = (c.rank() * 10 + round) as f32;
                        let t = Tensor::new(&[v, 1.0], &Device::Cpu).unwrap();
                        let s: Vec<f32> = c.all_reduce_sum(&t).unwrap().to_vec1().unwrap();
                        let b: Vec<f32> = c.broadcast(&t, 2).unwrap().to_vec1().unwrap();
                        let msg = vec![round as u8, 255, 0, c.rank() as u8];
                        let got = c.broadcast_bytes(&msg, 1).unwrap();
                        assert_eq!(got, vec![round as u8, 255, 0, 1]);
                        c.barrier().unwrap();
                        sums.push((s, b));
                    }
                    sums
                })
            })
            .collect();
        for h in handles {
            for (round, (s, b)) in h.join().unwrap().into_iter().enumerate() {
                assert_eq!(s, vec![(30 + 3 * round) as f32, 3.0]);
                assert_eq!(b, vec![(20 + round) as f32, 1.0]);
            }
        }
    }

    /// Rank 1 fails (or panics) before its first round: rank 0's round, which would have waited
    /// forever, fails naming rank 1 and its error, and so does every later round.
    #[test]
    fn a_rank_that_fails_or_panics_stops_the_group_instead_of_hanging_it() {
        for panics in [false, true] {
            let mut ranks = LocalCollective::group(2).into_iter();
            let (zero, one) = (ranks.next().unwrap(), ranks.next().unwrap());
            let waiting = std::thread::spawn(move || {
                zero.run_rank(|c| {
                    let t = Tensor::new(&[1f32], &Device::Cpu)?;
                    c.all_reduce_sum(&t)
                })
                .map(|_| ())
                .unwrap_err()
                .to_string()
            });
            let failing = std::thread::spawn(move || {
                let out = one.run_rank(|_| -> Result<()> {
                    if panics {
                        panic!("out of luck");
                    }
                    Err(Error::io(
                        "metrics.jsonl",
                        std::io::ErrorKind::IsADirectory.into(),
                    ))
                });
                (
                    out.map_err(|e| e.to_string()),
                    one.barrier().unwrap_err().to_string(),
                )
            });
            let e = waiting.join().unwrap();
            if panics {
                assert!(failing.join().is_err(), "the panic reaches the joiner");
                assert_eq!(e, "rank group stopped: rank 1 panicked");
            } else {
                let (out, later) = failing.join().unwrap();
                assert!(out.unwrap_err().starts_with("metrics.jsonl: "));
                assert!(
                    e.starts_with("rank group stopped: rank 1 failed: metrics.jsonl: "),
                    "{e}"
                );
                assert_eq!(later, e, "later rounds fail the same way");
            }
        }
    }
}
