//! [`LocalCollective`]: ranks as threads of one process, exchanging f32 vectors through a
//! mutex and a condition variable. Each operation is a round: every rank deposits its input,
//! the last to arrive combines them (in rank order, so the result does not depend on arrival
//! order) and wakes the others, who read the shared result.

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

    /// One round: deposits `data`, waits for every rank, returns the combined result.
    fn round(&self, data: Vec<f32>, root: usize, combine: Combine) -> Result<Arc<Vec<f32>>> {
        let poisoned = || Error::Unsupported("a rank of the in-process group panicked".into());
        let mut st = self.shared.state.lock().map_err(|_| poisoned())?;
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
                st = self.shared.done.wait(st).map_err(|_| poisoned())?;
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
}
