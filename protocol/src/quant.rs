//! The one-byte codec `Q`/`D` for a projected gradient `g`.
//!
//! Two codecs, chosen by the job:
//!
//! * **Log-magnitude** (the default, after the paper's own quantiser): bit 7 is the sign, bits 0..7
//!   a magnitude level `m`. `m = 0` is zero; `m = 1..=127` decodes to `min · r^(m-1)` with
//!   `r = (max/min)^(1/126)`, geometrically spaced over the job's range `[min, max]`.
//! * **Linear int8**: the byte is a two's-complement `k ∈ [-127, 127]`, decoding to `k · step`.
//!
//! Defined edge cases, the same for both: `Q(0) = 0x00`, `Q(NaN) = 0x00` (a broken estimate
//! contributes nothing), `Q(±∞)` and out-of-range values saturate at the largest level of their
//! sign. `D` is defined on all 256 bytes (0x80 and the linear -128 decode to 0 and to `-127·step`),
//! and `D(Q(g))` is monotone non-decreasing in `g`.
//!
//! Every replica applies `D(byte)`, so it must be the same f32 everywhere. The log codec's `ln`
//! and `exp` come from the `libm` crate (the same Rust code natively and in wasm) rather than
//! the platform's math library, whose last bits may differ from one system to another; the 256
//! values of the default job are pinned by a test run natively and inside wasm.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// [`Quantizer::decode_table_digest`] of the default quantizer, as hex: the native and the wasm
/// test suites both check it, so a platform whose `D` differs in one bit fails a test. (Computed
/// independently too: Python's `math.exp`/`math.log` in f64, rounded to f32, give these bits.)
pub const DEFAULT_DECODE_DIGEST: &str =
    "18783c6f731935caaa179e24290c7de18d6c081404880b618b5b3f90d54502c0";

/// Number of non-zero magnitude levels of the log codec.
const LOG_LEVELS: u8 = 127;

/// A job's choice of one-byte codec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Quantizer {
    /// Sign + 7-bit log magnitude over `[min, max]`.
    Log { min: f32, max: f32 },
    /// Linear int8 with the given step.
    Linear { step: f32 },
}

/// A quantizer whose parameters cannot work.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantizeError {
    #[error("log quantizer needs 0 < min < max, both finite and normal; got min={min}, max={max}")]
    LogRange { min: f32, max: f32 },
    #[error("linear quantizer needs a finite, normal step > 0; got {0}")]
    LinearStep(f32),
}

impl Default for Quantizer {
    fn default() -> Self {
        Quantizer::Log {
            min: 1e-3,
            max: 100.0,
        }
    }
}

impl Quantizer {
    /// Checks that the parameters make a working codec.
    pub fn validate(&self) -> Result<(), QuantizeError> {
        match *self {
            Quantizer::Log { min, max } => {
                if !(min.is_normal() && max.is_finite() && min > 0.0 && max > min) {
                    return Err(QuantizeError::LogRange { min, max });
                }
            }
            Quantizer::Linear { step } => {
                if !(step.is_normal() && step > 0.0) {
                    return Err(QuantizeError::LinearStep(step));
                }
            }
        }
        Ok(())
    }

    /// `Q`: the byte for `g`.
    pub fn encode(&self, g: f32) -> u8 {
        if g.is_nan() || g == 0.0 {
            return 0;
        }
        match *self {
            Quantizer::Log { min, max } => {
                let (min, max) = (f64::from(min), f64::from(max));
                let ln_ratio = libm::log(max / min) / f64::from(LOG_LEVELS - 1);
                let mag = f64::from(g.abs());
                // Levels are geometric; below half the first level's log step is zero.
                let pos = libm::log(mag / min) / ln_ratio; // level - 1, fractional
                let level = if pos < -0.5 {
                    0
                } else if pos.is_infinite() || pos >= f64::from(LOG_LEVELS - 1) {
                    LOG_LEVELS
                } else {
                    (pos.round() as u8).clamp(0, LOG_LEVELS - 1) + 1
                };
                if level == 0 {
                    0
                } else if g < 0.0 {
                    0x80 | level
                } else {
                    level
                }
            }
            Quantizer::Linear { step } => {
                let k = (f64::from(g) / f64::from(step))
                    .round()
                    .clamp(-127.0, 127.0) as i8;
                k as u8
            }
        }
    }

    /// `D`: the value a byte stands for. Every replica computes this on the CPU in f32.
    pub fn decode(&self, byte: u8) -> f32 {
        match *self {
            Quantizer::Log { min, max } => {
                let level = byte & 0x7f;
                if level == 0 {
                    return 0.0;
                }
                // Computed in f64 and rounded once, so every platform gets the same f32.
                let (min, max) = (f64::from(min), f64::from(max));
                let t = f64::from(level - 1) / f64::from(LOG_LEVELS - 1);
                let mag = libm::exp(libm::log(min) + t * libm::log(max / min)) as f32;
                if byte & 0x80 != 0 { -mag } else { mag }
            }
            Quantizer::Linear { step } => {
                let k = (byte as i8).max(-127);
                f32::from(k) * step
            }
        }
    }

    /// SHA-256 over the bits of `D` for all 256 bytes, little-endian: what two platforms compare
    /// to know they decode the log alike.
    pub fn decode_table_digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut sha = Sha256::new();
        for byte in 0..=255u8 {
            sha.update(self.decode(byte).to_bits().to_le_bytes());
        }
        sha.finalize().into()
    }

    /// The ratio between neighbouring magnitudes (log codec) or the step (linear codec):
    /// `D(Q(g))` is within half of it of `g` for any `g` inside the range.
    pub fn resolution(&self) -> f32 {
        match *self {
            Quantizer::Log { min, max } => {
                let ln_ratio = libm::log(f64::from(max) / f64::from(min));
                libm::exp(ln_ratio / f64::from(LOG_LEVELS - 1)) as f32
            }
            Quantizer::Linear { step } => step,
        }
    }

    /// A byte's magnitude level in `0..=127`: `|D(byte)|` grows with it (strictly, from 0),
    /// for both codecs. What the relay's clipping bound is expressed in.
    pub fn magnitude(&self, byte: u8) -> u8 {
        match *self {
            Quantizer::Log { .. } => byte & 0x7f,
            Quantizer::Linear { .. } => (byte as i8).unsigned_abs().min(127),
        }
    }

    /// `byte` with its magnitude level lowered to at most `level` and its sign kept: the
    /// clipped contribution the relay logs in place of one above its bound.
    pub fn clip(&self, byte: u8, level: u8) -> u8 {
        let level = level.min(LOG_LEVELS);
        if self.magnitude(byte) <= level {
            return byte;
        }
        match *self {
            Quantizer::Log { .. } if level == 0 => 0,
            Quantizer::Log { .. } => (byte & 0x80) | level,
            Quantizer::Linear { .. } => {
                let level = level as i8;
                (if (byte as i8) < 0 { -level } else { level }) as u8
            }
        }
    }

    /// The byte of the median of `votes`' values: the middle one of an odd count, the byte
    /// nearest the mean of the two middle ones of an even count (`D⁻¹(0)` for none). What a
    /// committee round logs; the relay and the in-process simulation decide rounds with it.
    pub fn median(&self, votes: &[u8]) -> u8 {
        let mut sorted: Vec<(f32, u8)> = votes.iter().map(|&b| (self.decode(b), b)).collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = sorted.len();
        match n {
            0 => self.encode(0.0),
            _ if n % 2 == 1 => sorted[n / 2].1,
            _ => self.encode((sorted[n / 2 - 1].0 + sorted[n / 2].0) / 2.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOG: Quantizer = Quantizer::Log {
        min: 1e-3,
        max: 100.0,
    };
    const LIN: Quantizer = Quantizer::Linear { step: 0.05 };

    #[test]
    fn d_of_the_default_quantizer_is_pinned_bit_for_bit() {
        let hex: String = Quantizer::default()
            .decode_table_digest()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, DEFAULT_DECODE_DIGEST);
        // Three values by hand, as bits: the smallest magnitude, the largest, and a negative one.
        let q = Quantizer::default();
        assert_eq!(q.decode(0x01).to_bits(), 1e-3f32.to_bits());
        assert_eq!(q.decode(0x7f).to_bits(), 100f32.to_bits());
        assert_eq!(q.decode(0x81).to_bits(), (-1e-3f32).to_bits());
    }

    #[test]
    fn zero_and_nan_encode_to_zero() {
        for q in [LOG, LIN] {
            assert_eq!(q.encode(0.0), 0);
            assert_eq!(q.encode(-0.0), 0);
            assert_eq!(q.encode(f32::NAN), 0);
            assert_eq!(q.decode(0), 0.0);
        }
    }

    #[test]
    fn infinities_saturate_with_their_sign() {
        assert_eq!(LOG.encode(f32::INFINITY), 127);
        assert_eq!(LOG.encode(f32::NEG_INFINITY), 0xff);
        assert!((LOG.decode(127) - 100.0).abs() < 1e-3);
        assert_eq!(LIN.encode(f32::INFINITY) as i8, 127);
        assert_eq!(LIN.encode(f32::NEG_INFINITY) as i8, -127);
    }

    #[test]
    fn every_byte_decodes_to_a_finite_value() {
        for q in [LOG, LIN] {
            for b in 0..=255u8 {
                assert!(q.decode(b).is_finite());
            }
        }
    }

    #[test]
    fn invalid_ranges_are_refused() {
        assert!(Quantizer::Log { min: 0.0, max: 1.0 }.validate().is_err());
        assert!(Quantizer::Log { min: 2.0, max: 1.0 }.validate().is_err());
        assert!(
            Quantizer::Log {
                min: 1.0,
                max: f32::INFINITY
            }
            .validate()
            .is_err()
        );
        assert!(Quantizer::Linear { step: -1.0 }.validate().is_err());
        assert!(LOG.validate().is_ok() && LIN.validate().is_ok());
    }

    #[test]
    fn clipping_lowers_the_magnitude_and_keeps_the_sign() {
        for q in [LOG, LIN] {
            for b in 0..=255u8 {
                let m = q.magnitude(b);
                assert_eq!(m == 0, q.decode(b) == 0.0, "byte {b:#04x}");
                for level in [0u8, 1, 40, 127] {
                    let c = q.clip(b, level);
                    assert_eq!(q.magnitude(c), m.min(level), "byte {b:#04x} to {level}");
                    assert!(q.decode(c).abs() <= q.decode(b).abs());
                    if q.decode(c) != 0.0 {
                        assert_eq!(q.decode(c).signum(), q.decode(b).signum());
                    }
                }
            }
            // Magnitudes order the decoded values.
            let by_level: Vec<f32> = (0..=127u8).map(|b| q.decode(b).abs()).collect();
            assert!(by_level.windows(2).all(|w| w[0] < w[1]));
        }
    }

    proptest! {
        #[test]
        fn quantizer_is_monotone(a in -1e4f32..1e4, b in -1e4f32..1e4) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            for q in [LOG, LIN] {
                prop_assert!(q.decode(q.encode(lo)) <= q.decode(q.encode(hi)));
            }
        }

        #[test]
        fn log_quantizer_round_trips_within_half_a_step(mag in 1e-3f32..100.0, neg: bool) {
            let g = if neg { -mag } else { mag };
            let back = LOG.decode(LOG.encode(g));
            prop_assert_eq!(back.signum(), g.signum());
            let ratio = f64::from(back / g);
            let half_step = f64::from(LOG.resolution()).sqrt();
            prop_assert!(ratio <= half_step * 1.000_01 && ratio >= 1.0 / half_step / 1.000_01,
                "g={g} back={back}");
        }

        #[test]
        fn linear_quantizer_round_trips_within_half_a_step(g in -6.35f32..6.35) {
            let back = LIN.decode(LIN.encode(g));
            prop_assert!((back - g).abs() <= 0.025 + 1e-6);
        }

        #[test]
        fn decode_of_encode_is_a_fixed_point(b: u8) {
            for q in [LOG, LIN] {
                let v = q.decode(b);
                let canonical = q.decode(q.encode(v));
                prop_assert_eq!(v, canonical);
            }
        }
    }
}
