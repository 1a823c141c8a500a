//! Differential privacy for a peer's data, as a job option (`[privacy]`).
//!
//! What leaves a peer is one scalar per contribution, so privacy can be made formal on that
//! scalar alone: each example's loss difference `(L_i(θ+εz) − L_i(θ−εz)) / 2ε` is clipped to
//! `[−C, C]`, the clipped values are averaged over the batch, and Gaussian noise of standard
//! deviation `σ·C / B` is added before quantizing. Adding or removing one example moves the
//! clipped sum by at most `C`, so each contribution is the Gaussian mechanism with noise
//! multiplier `σ` on a batch sampled from the peer's data at rate `q = B / N`. The byte is post-processing; the relay, the log and the other peers learn
//! nothing more. A private peer sends no loss reports (they would be another release).
//!
//! [`Accountant`] tracks what that has cost: the Rényi DP of the subsampled Gaussian mechanism
//! at integer orders (the bound for Poisson sampling at rate q; a peer's batches are drawn
//! uniformly, which the usual practice accounts for the same way), composed over the
//! contributions sent, then turned into (ε, δ).

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// A job's `[privacy]` section.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    /// C: each example's loss difference is clipped to `[−C, C]`.
    pub clip: f32,
    /// σ: the noise's standard deviation is `σ·C / batch_size`.
    pub noise_multiplier: f32,
    /// δ of the (ε, δ) a peer is told it has spent.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

impl PrivacySpec {
    /// Why these values cannot work, if they cannot.
    pub fn problem(&self) -> Option<(&'static str, String, &'static str)> {
        if !(self.clip.is_normal() && self.clip > 0.0) {
            return Some(("clip", self.clip.to_string(), "must be a finite number > 0"));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.3) {
            return Some((
                "noise_multiplier",
                self.noise_multiplier.to_string(),
                "must be a finite number ≥ 0.3 (below it the accounting says little)",
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Some(("delta", self.delta.to_string(), "must be in (0, 1)"));
        }
        None
    }
}

/// The Gaussian noise a private peer adds: from the system's randomness, never from a seed
/// anyone else could know.
pub struct Noise {
    rng: ChaCha20Rng,
    /// A second normal value from the last Box–Muller pair.
    spare: Option<f64>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Noise")
    }
}

impl Noise {
    /// Seeded from the operating system (the browser's `crypto.getRandomValues` in wasm).
    pub fn from_system() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Noise::from_seed(seed))
    }

    /// A fixed seed: for tests only (noise anyone can reproduce protects nothing).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Noise {
            rng: ChaCha20Rng::from_seed(seed),
            spare: None,
        }
    }

    /// One draw from N(0, 1).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // Box–Muller: u1 in (0, 1], u2 in [0, 1).
        let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
        let u1 = 1.0 - unit(self.rng.next_u64());
        let u2 = unit(self.rng.next_u64());
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare = Some(r * angle.sin());
        r * angle.cos()
    }
}

/// Integer Rényi orders the accountant evaluates; the best one gives ε.
const ORDERS: [u32; 38] = [
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44,
    48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512,
];

/// What a private peer has spent: its contributions so far, each a subsampled Gaussian
/// mechanism.
#[derive(Debug, Clone)]
pub struct Accountant {
    /// Sampling rate `B / N`.
    q: f64,
    delta: f64,
    /// RDP of one step at each of [`ORDERS`].
    per_step: Vec<f64>,
    steps: u64,
}

impl Accountant {
    /// For batches of `batch` examples out of `examples`, noise multiplier `sigma`.
    pub fn new(spec: &PrivacySpec, batch: usize, examples: usize) -> Self {
        let q = (batch as f64 / examples.max(1) as f64).min(1.0);
        let sigma = f64::from(spec.noise_multiplier);
        Accountant {
            q,
            delta: spec.delta,
            per_step: ORDERS
                .iter()
                .map(|&a| subsampled_gaussian_rdp(q, sigma, a))
                .collect(),
            steps: 0,
        }
    }

    /// One more contribution was released.
    pub fn record(&mut self, n: u64) {
        self.steps += n;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn delta(&self) -> f64 {
        self.delta
    }

    pub fn sampling_rate(&self) -> f64 {
        self.q
    }

    /// ε of the (ε, δ) spent so far (0 before the first contribution).
    pub fn epsilon(&self) -> f64 {
        self.epsilon_after(self.steps)
    }

    /// ε after `steps` contributions.
    pub fn epsilon_after(&self, steps: u64) -> f64 {
        if steps == 0 {
            return 0.0;
        }
        let (t, log_delta) = (steps as f64, self.delta.ln());
        ORDERS
            .iter()
            .zip(&self.per_step)
            .map(|(&a, &rdp)| {
                let a = f64::from(a);
                // RDP to (ε, δ), the conversion of Balle et al. (2020): tighter than
                // rdp + log(1/δ)/(α−1) by the last two terms.
                t * rdp + ((a - 1.0) / a).ln() - (log_delta + a.ln()) / (a - 1.0)
            })
            .fold(f64::INFINITY, f64::min)
            .max(0.0)
    }
}

/// RDP at integer order `alpha` of the Gaussian mechanism with noise multiplier `sigma` on a
/// batch sampled at rate `q`: `log(Σ_k C(α,k) (1−q)^(α−k) q^k exp((k²−k) / 2σ²)) / (α−1)`
/// (Mironov, Talwar and Zhang, 2019), summed in log space.
fn subsampled_gaussian_rdp(q: f64, sigma: f64, alpha: u32) -> f64 {
    let a = f64::from(alpha);
    if q >= 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    let (log_q, log_1q) = (q.ln(), (-q).ln_1p());
    let terms: Vec<f64> = (0..=alpha)
        .map(|k| {
            let k = f64::from(k);
            ln_binomial(a, k) + (a - k) * log_1q + k * log_q + (k * k - k) / (2.0 * sigma * sigma)
        })
        .collect();
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
    log_sum / (a - 1.0)
}

/// `ln C(n, k)` for integers as f64.
fn ln_binomial(n: f64, k: f64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

fn ln_factorial(n: f64) -> f64 {
    (2..=n as u64).map(|i| (i as f64).ln()).sum()
}

/// A private peer's noise and what it has spent.
#[derive(Debug)]
pub struct PrivatePeer {
    pub spec: PrivacySpec,
    pub accountant: Accountant,
    noise: Noise,
    batch: usize,
}

impl PrivatePeer {
    /// For `job`, when it asks for privacy, over a local training set of `examples`.
    pub fn for_job(job: &crate::Job, examples: usize) -> Result<Option<Self>, getrandom::Error> {
        let Some(spec) = job.privacy() else {
            return Ok(None);
        };
        Ok(Some(PrivatePeer::new(
            *spec,
            job.hyper().batch_size,
            examples,
            Noise::from_system()?,
        )))
    }

    pub fn new(spec: PrivacySpec, batch: usize, examples: usize, noise: Noise) -> Self {
        PrivatePeer {
            spec,
            accountant: Accountant::new(&spec, batch, examples),
            noise,
            batch,
        }
    }

    /// The value to send for a batch whose clipped per-example differences average
    /// `clipped_mean`: that plus N(0, (σC/B)²). Counts one release.
    pub fn release(&mut self, clipped_mean: f32) -> f32 {
        let spec = &self.spec;
        let std =
            f64::from(spec.noise_multiplier) * f64::from(spec.clip) / self.batch.max(1) as f64;
        self.accountant.record(1);
        (f64::from(clipped_mean) + std * self.noise.standard_normal()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: PrivacySpec = PrivacySpec {
        clip: 1.0,
        noise_multiplier: 1.1,
        delta: 1e-5,
    };

    #[test]
    fn without_subsampling_the_gaussian_mechanism_has_its_closed_form_rdp() {
        // One Gaussian mechanism of sensitivity 1 and noise σ: RDP α/(2σ²) at every order.
        for alpha in [2, 8, 64] {
            let rdp = subsampled_gaussian_rdp(1.0, 2.0, alpha);
            assert!((rdp - f64::from(alpha) / 8.0).abs() < 1e-12);
            // The sum over k gives the same as q → 1.
            let near = subsampled_gaussian_rdp(1.0 - 1e-12, 2.0, alpha);
            assert!((near - rdp).abs() < 1e-6, "{near} vs {rdp}");
        }
    }

    #[test]
    fn the_accountant_agrees_with_an_independent_implementation() {
        // Figures from Google's `dp-accounting` 0.6 (Python, RdpAccountant with a Poisson-
        // sampled Gaussian, these same integer orders): DP-SGD on MNIST as often quoted
        // (60 000 examples, batches of 256, σ = 1.1, 60 epochs, δ = 1e-5), and a smaller case.
        let cases = [
            (1.1, 256, 60_000, 60 * 60_000 / 256, 2.596_981),
            (1.0, 1, 100, 1_000, 2.107_753),
        ];
        for (sigma, batch, examples, steps, reference) in cases {
            let spec = PrivacySpec {
                noise_multiplier: sigma,
                ..SPEC
            };
            let eps = Accountant::new(&spec, batch, examples).epsilon_after(steps);
            assert!(
                (eps / reference - 1.0).abs() < 0.005,
                "ε = {eps}, dp-accounting says {reference}"
            );
        }
    }

    #[test]
    fn epsilon_grows_with_steps_and_shrinks_with_noise() {
        let acc = Accountant::new(&SPEC, 32, 1_000);
        let (a, b) = (acc.epsilon_after(100), acc.epsilon_after(1_000));
        assert!(0.0 < a && a < b, "{a} {b}");
        let noisier = Accountant::new(
            &PrivacySpec {
                noise_multiplier: 2.0,
                ..SPEC
            },
            32,
            1_000,
        );
        assert!(noisier.epsilon_after(1_000) < b);
        assert_eq!(acc.epsilon(), 0.0);
    }

    #[test]
    fn noise_is_standard_normal() {
        let mut noise = Noise::from_seed([3; 32]);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| noise.standard_normal()).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        let beyond_2 = draws.iter().filter(|x| x.abs() > 2.0).count() as f64 / n as f64;
        assert!((beyond_2 - 0.0455).abs() < 0.003, "P(|z| > 2) = {beyond_2}");
    }

    #[test]
    fn bad_privacy_settings_are_named() {
        let bad = PrivacySpec { clip: -1.0, ..SPEC };
        assert_eq!(bad.problem().map(|p| p.0), Some("clip"));
        let bad = PrivacySpec { delta: 1.0, ..SPEC };
        assert_eq!(bad.problem().map(|p| p.0), Some("delta"));
        assert!(SPEC.problem().is_none());
    }
}
