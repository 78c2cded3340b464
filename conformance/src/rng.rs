//! The seeded generator of test data: `rand`'s `StdRng` (ChaCha12) from a u64 seed, normals from
//! `rand_distr` (the repository's one generator: the benchmarks and examples use the same
//! crates). Fresh normals per case, reproducible from the case's seed.

use rand::{Rng as _, RngCore, SeedableRng};
use rand_distr::StandardNormal;

/// Seeded random numbers.
#[derive(Debug, Clone)]
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        loop {
            let u: f64 = self.0.random();
            if u > 0.0 {
                return u;
            }
        }
    }

    /// `n` standard normals times `amplitude`.
    pub fn normals(&mut self, n: usize, amplitude: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.sample::<f32, _>(StandardNormal) * amplitude).collect()
    }
}
