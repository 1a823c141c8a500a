//! The weight hash: SHA-256 over the exact f32 bits of θ, little-endian, in parameter order.

use protocol::WeightHash;
use sha2::{Digest, Sha256};

/// Hashes `theta`'s bit patterns (so `0.0` and `-0.0`, or two NaNs, hash differently).
pub fn weight_hash(theta: &[f32]) -> WeightHash {
    let mut h = Sha256::new();
    for v in theta {
        h.update(v.to_bits().to_le_bytes());
    }
    WeightHash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_sees_every_bit() {
        let a = weight_hash(&[0.0, 1.0]);
        assert_eq!(a, weight_hash(&[0.0, 1.0]));
        assert_ne!(a, weight_hash(&[-0.0, 1.0]));
        assert_ne!(a, weight_hash(&[0.0, f32::from_bits(1.0f32.to_bits() + 1)]));
        assert_ne!(a, weight_hash(&[1.0, 0.0]));
    }
}
