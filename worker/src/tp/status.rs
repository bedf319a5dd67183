//! The status round: after (and for forward passes, also before) each command, every rank says
//! whether it succeeded, so a follower's error reaches the leader instead of leaving the group
//! waiting. One all-reduce of a flag per rank, then one byte broadcast per failed rank carrying
//! its message; when every rank succeeded that is a single small all-reduce.

use candle_core::{DType, Device, Tensor};

use crate::Result;
use crate::collective::Collective;

/// A rank's failure, as every rank learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankFailure {
    pub rank: usize,
    pub message: String,
}

/// Every rank passes its own outcome (`Err(message)` on failure) and gets every failed rank's,
/// in rank order. `device` is where the flag tensor lives (the collective's device).
pub fn status_round(
    coll: &dyn Collective,
    device: &Device,
    mine: std::result::Result<(), String>,
) -> Result<Vec<RankFailure>> {
    let world = coll.world_size();
    let rank = coll.rank();
    let mut flags = vec![0f32; world];
    if mine.is_err() {
        flags[rank] = 1.0;
    }
    let flags = Tensor::from_vec(flags, world, device)?;
    let summed: Vec<f32> = coll
        .all_reduce_sum(&flags)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let my_message = mine.err().unwrap_or_default();
    let mut failures = Vec::new();
    for (r, flag) in summed.into_iter().enumerate() {
        if flag > 0.5 {
            let bytes = coll.broadcast_bytes(my_message.as_bytes(), r)?;
            failures.push(RankFailure {
                rank: r,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }
    Ok(failures)
}

/// "rank 1: message; rank 3: message".
pub fn describe(failures: &[RankFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("rank {}: {}", f.rank, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::LocalCollective;

    #[test]
    fn every_rank_learns_every_failure_in_rank_order() {
        let handles: Vec<_> = LocalCollective::group(4)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let all_ok = status_round(&c, &Device::Cpu, Ok(())).unwrap();
                    let mine = match c.rank() {
                        1 | 3 => Err(format!("boom {}", c.rank())),
                        _ => Ok(()),
                    };
                    let some = status_round(&c, &Device::Cpu, mine).unwrap();
                    (all_ok, some)
                })
            })
            .collect();
        for h in handles {
            let (all_ok, some) = h.join().unwrap();
            assert!(all_ok.is_empty());
            assert_eq!(describe(&some), "rank 1: boom 1; rank 3: boom 3");
        }
    }
}
