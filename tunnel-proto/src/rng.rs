//! Injected randomness: ESP IVs, SPIs and keys.
//!
//! Owns the [`RandomSource`] trait and the production implementation. Tests pass a
//! deterministic source so that packets and keys are reproducible.

/// Where the protocol gets random bytes from (IVs, SPIs, ESP keys).
pub trait RandomSource {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system seeded, thread-local CSPRNG of the `rand` crate.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        use rand::RngCore;
        rand::rng().fill_bytes(buf);
    }
}

impl<R: RandomSource + ?Sized> RandomSource for Box<R> {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::RandomSource;

    /// A reproducible byte stream (xorshift), distinct per seed.
    #[derive(Debug, Clone)]
    pub(crate) struct TestRandom(pub(crate) u64);

    impl RandomSource for TestRandom {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = (self.0 >> 24) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestRandom;
    use super::*;

    #[test]
    fn os_random_is_not_constant() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill(&mut a);
        OsRandom.fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn test_random_is_reproducible() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        TestRandom(7).fill(&mut a);
        TestRandom(7).fill(&mut b);
        assert_eq!(a, b);
        TestRandom(8).fill(&mut b);
        assert_ne!(a, b);
    }
}
