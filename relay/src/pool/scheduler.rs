//! The pure scheduling rule: lowest priority number first, weighted random inside
//! the tier. Kept free of state so it can be tested statistically.

use rand::Rng;

/// What the rule needs to know about one eligible account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Lower is preferred.
    pub priority: i32,
    /// Relative share inside the tier (0 is treated as 1).
    pub weight: u32,
}

/// Picks an index into `candidates`: among those with the lowest priority, one at
/// random with probability proportional to its weight. `None` when empty.
pub fn choose<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Option<usize> {
    let best = candidates.iter().map(|c| c.priority).min()?;
    let total: u64 = candidates
        .iter()
        .filter(|c| c.priority == best)
        .map(|c| u64::from(c.weight.max(1)))
        .sum();
    let mut ticket = rng.gen_range(0..total);
    for (i, c) in candidates.iter().enumerate() {
        if c.priority != best {
            continue;
        }
        let w = u64::from(c.weight.max(1));
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    // Unreachable in arithmetic terms; fall back to the first of the tier.
    candidates.iter().position(|c| c.priority == best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn empty_gives_none() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&[], &mut rng), None);
    }

    #[test]
    fn lowest_priority_tier_always_wins() {
        let c = [
            Candidate {
                priority: 5,
                weight: 1000,
            },
            Candidate {
                priority: 1,
                weight: 1,
            },
            Candidate {
                priority: 9,
                weight: 1000,
            },
        ];
        let mut rng = StdRng::from_entropy();
        for _ in 0..2000 {
            assert_eq!(choose(&c, &mut rng), Some(1));
        }
    }

    /// 6000 picks over weights 1:2:3 from a random seed. Chi-square with 2 degrees of
    /// freedom: the 1e-9 tail is at 41.4, so this cannot flake in practice while any
    /// real bias (e.g. uniform picking gives chi² ≈ 1000) fails clearly.
    #[test]
    fn weights_are_respected_chi_square() {
        let c = [
            Candidate {
                priority: 0,
                weight: 1,
            },
            Candidate {
                priority: 0,
                weight: 2,
            },
            Candidate {
                priority: 0,
                weight: 3,
            },
            Candidate {
                priority: 1,
                weight: 100,
            },
        ];
        let mut rng = StdRng::from_entropy();
        let n = 6000u32;
        let mut counts = [0u32; 4];
        for _ in 0..n {
            counts[choose(&c, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "a worse tier is never picked");
        let expected = [1000.0, 2000.0, 3000.0];
        let chi2: f64 = expected
            .iter()
            .zip(counts.iter())
            .map(|(e, &o)| (f64::from(o) - e).powi(2) / e)
            .sum();
        assert!(chi2 < 41.4, "chi² {chi2} too large for counts {counts:?}");
    }
}
