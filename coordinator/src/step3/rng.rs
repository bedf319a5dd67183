//! The random streams behind LLaMA-Factory v0.7.1's few-shot order, reimplemented exactly.
//!
//! LF calls `dataset["train"].shuffle()` with no seed for every test example. HF `datasets`
//! (2.16, `Dataset.shuffle`) then takes the raw MT19937 key word at the legacy global numpy
//! state's position as the seed (`st[pos] if pos < 624 else st[0]`), advances the global state by
//! one `np.random.random()` (two 32-bit outputs), and permutes with
//! `np.random.default_rng(seed).permutation(n)`: `SeedSequence(seed)` → `PCG64` →
//! `Generator.shuffle` (Fisher–Yates from the back, masked-rejection `random_interval`).
//!
//! - [`ShuffleSeeds`] gives the seeds after `np.random.seed(s)` (MT19937, `init_genrand`).
//! - [`permutation`] is `np.random.default_rng(seed).permutation(n)`.

/// MT19937 state size in 32-bit words.
const MT_N: usize = 624;
const MT_M: usize = 397;

/// The legacy global numpy generator (`np.random.seed`, `get_state`, `random`), reduced to what
/// the shuffle seeding reads: the key words and the position.
#[derive(Clone)]
struct Mt19937 {
    key: [u32; MT_N],
    pos: usize,
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed: Matsumoto–Nishimura `init_genrand`; the
    /// position is left at 624 so the first draw regenerates the block.
    fn new(seed: u32) -> Self {
        let mut key = [0u32; MT_N];
        key[0] = seed;
        for i in 1..MT_N {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { key, pos: MT_N }
    }

    /// Regenerates the whole block of key words (the "twist").
    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..MT_N {
            let y = (self.key[i] & UPPER) | (self.key[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.key[i] = self.key[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// Advances by one 32-bit output (tempering is irrelevant: only the state is observed).
    fn skip_u32(&mut self) {
        if self.pos >= MT_N {
            self.twist();
        }
        self.pos += 1;
    }

    /// The word `datasets` reads as the seed: `st[pos] if pos < 624 else st[0]`.
    fn seed_word(&self) -> u32 {
        if self.pos < MT_N {
            self.key[self.pos]
        } else {
            self.key[0]
        }
    }
}

/// The seeds of successive seedless `Dataset.shuffle()` calls after `np.random.seed(seed)`.
#[derive(Clone)]
pub struct ShuffleSeeds {
    mt: Mt19937,
}

impl ShuffleSeeds {
    /// The stream after `np.random.seed(seed)` (LF: `transformers.set_seed(42)` once per task).
    pub fn new(seed: u32) -> Self {
        Self {
            mt: Mt19937::new(seed),
        }
    }

    /// The seed of the next `shuffle()`; advances the state like its `np.random.random()` (one
    /// double from two 32-bit outputs).
    pub fn next_seed(&mut self) -> u32 {
        let seed = self.mt.seed_word();
        self.mt.skip_u32();
        self.mt.skip_u32();
        seed
    }
}

impl Iterator for ShuffleSeeds {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        Some(self.next_seed())
    }
}

/// numpy `SeedSequence(entropy).generate_state(8, uint32)` for a 32-bit entropy, no spawn key.
fn seed_sequence_state(entropy: u32) -> [u32; 8] {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_MULT_L: u32 = 0xca01_f9dd;
    const MIX_MULT_R: u32 = 0x4973_f715;
    const XSHIFT: u32 = 16;
    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    // The entropy is one word (a non-negative int below 2**32); the pool has four.
    let mut pool = [0u32; 4];
    for (i, word) in pool.iter_mut().enumerate() {
        *word = hashmix(if i == 0 { entropy } else { 0 });
    }
    for src in 0..4 {
        for dst in 0..4 {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    let mut out = [0u32; 8];
    let mut hash_b = INIT_B;
    for (i, word) in out.iter_mut().enumerate() {
        let mut v = pool[i % 4] ^ hash_b;
        hash_b = hash_b.wrapping_mul(MULT_B);
        v = v.wrapping_mul(hash_b);
        *word = v ^ (v >> XSHIFT);
    }
    out
}

/// numpy's `PCG64` bit generator (128-bit LCG, XSL-RR output) with its 32-bit output buffer.
struct Pcg64 {
    state: u128,
    inc: u128,
    spare: Option<u32>,
}

const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

impl Pcg64 {
    /// `PCG64(SeedSequence(seed))`: four 64-bit words from the seed sequence, the first two the
    /// initial state (high, low), the last two the stream.
    fn from_seed(seed: u32) -> Self {
        let w = seed_sequence_state(seed);
        let word64 = |i: usize| (w[2 * i] as u64 | ((w[2 * i + 1] as u64) << 32)) as u128;
        let init_state = (word64(0) << 64) | word64(1);
        let init_seq = (word64(2) << 64) | word64(3);
        let mut rng = Self {
            state: 0,
            inc: (init_seq << 1) | 1,
            spare: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(init_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        (hi ^ lo).rotate_right((hi >> 58) as u32)
    }

    /// numpy's `next_uint32` for PCG64: the low half of a 64-bit output, the high half kept.
    fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let v = self.next_u64();
        self.spare = Some((v >> 32) as u32);
        v as u32
    }

    /// numpy's `random_interval(max)`, which `Generator.shuffle` draws its swap partners with: a
    /// uniform integer in `0..=max` by masked rejection (the mask is `max` with every lower bit
    /// set), on 32-bit outputs while `max` fits in 32 bits, else on 64-bit ones.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `np.random.default_rng(seed).permutation(n)`: `arange(n)` shuffled by Fisher–Yates from the
/// last element down, each swap partner drawn by [`Pcg64::interval`] from `0..=i`.
pub fn permutation(seed: u32, n: usize) -> Vec<usize> {
    let mut rng = Pcg64::from_seed(seed);
    let mut items: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        items.swap(i, j);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/FIDELITY.md §3.3: the first seeds after `np.random.seed(42)` and their 5-row
    /// permutations.
    #[test]
    fn first_seeds_and_permutations_match_numpy() {
        let seeds: Vec<u32> = ShuffleSeeds::new(42).take(6).collect();
        assert_eq!(
            seeds,
            [
                42, 4170412009, 3342822751, 1210243767, 1412570585, 2465546753
            ]
        );
        let perms: Vec<Vec<usize>> = seeds.iter().map(|&s| permutation(s, 5)).collect();
        assert_eq!(
            perms,
            [
                [4, 2, 3, 1, 0],
                [3, 0, 1, 2, 4],
                [1, 0, 4, 3, 2],
                [0, 4, 1, 3, 2],
                [3, 4, 1, 0, 2],
                [4, 1, 3, 0, 2]
            ]
        );
    }

    #[test]
    fn small_permutations_are_identity_like() {
        assert_eq!(permutation(7, 0), Vec::<usize>::new());
        assert_eq!(permutation(7, 1), vec![0]);
    }
}
