//! Bounded influence: each contribution's magnitude is clipped to a bound learned from recent
//! contributions, and a peer whose bytes keep hitting that bound is quarantined.
//!
//! The bound is `factor` times a typical magnitude `|D(byte)|`, rounded down to a level of the
//! job's quantizer. The typical magnitude is a median of medians: each peer among the senders
//! of the last [`WINDOW`] contributions has the median of its own latest [`PER_PEER`] non-zero
//! levels, and the bound starts from the lower median of those. One peer counts once however
//! fast it sends, so a minority of peers can neither raise the bound they are clipped to (by
//! sending the largest byte) nor lower it until honest peers are clipped (by flooding tiny
//! ones). The log records the clipped byte itself: every replica applies the same step and none
//! needs to know the bound.
//!
//! A peer is quarantined when, over its last [`JUDGED_OVER`] contributions, at least the
//! configured share was clipped. An honest peer's estimate lands that far out now and then (a
//! Gaussian beyond 2.7 σ: under 1 % of the time at the default factor of 4); an attacker who
//! sends the largest byte is clipped every time. A quarantined peer's contributions are
//! rejected with [`protocol::RejectReason::Quarantined`]; it may still follow the log. The
//! relay's host sees it on `/admin` and may release it.

use protocol::{PeerId, Quantizer};
use std::collections::{HashMap, HashSet, VecDeque};

/// The peers that sent the last this many contributions are the ones the bound is learned from.
pub const WINDOW: usize = 1024;
/// Each of them counts with the median of its latest this many non-zero levels.
pub const PER_PEER: usize = 16;
/// Fewer contributions than this in the window and nothing is clipped yet (a new job's first
/// moments).
pub const MIN_SAMPLES: usize = 64;
/// The bound is recomputed after this many admitted contributions (it moves slowly, and the
/// median of medians costs a pass over the window's peers).
const RETUNE_EVERY: u32 = 64;
/// A peer is judged on this many of its latest contributions.
pub const JUDGED_OVER: u32 = 64;
/// Nobody is quarantined while fewer peers than this sent the window's contributions. A
/// quarantine says a peer's bytes lie outside everyone else's; alone (or with one other) a
/// peer's own median sets most of the bound, and when its magnitudes rise together (a harder
/// stretch of training) its next contributions all exceed a bound retuned only every
/// [`RETUNE_EVERY`] admissions. An honest peer alone with a relay was quarantined that way
/// after a few thousand contributions. It is still clipped.
pub const MIN_PEERS_JUDGED: usize = 3;

/// The host's policy (`--clip-factor`, `--quarantine-share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InfluenceConfig {
    /// The bound is this many times the recent median magnitude; 0 turns clipping (and so
    /// quarantine) off.
    pub clip_factor: f32,
    /// Share of a peer's last [`JUDGED_OVER`] contributions that, clipped, quarantines it; 0
    /// never quarantines.
    pub quarantine_share: f32,
}

/// What happened to one contribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The byte to log: the one sent, or it clipped to the bound.
    pub byte: u8,
    pub clipped: bool,
    /// This contribution tipped its peer into quarantine (it is still logged, clipped).
    pub quarantined: bool,
}

/// A peer's recent record: which of its last contributions were clipped, and its latest
/// non-zero levels.
#[derive(Debug, Default, Clone, Copy)]
struct Record {
    /// Bit i: the i-th latest contribution was clipped.
    clipped: u64,
    /// Contributions seen, up to [`JUDGED_OVER`].
    seen: u32,
    /// A ring of its latest non-zero levels (`filled` of them valid), next write at `next`.
    levels: [u8; PER_PEER],
    filled: u8,
    next: u8,
}

impl Record {
    fn remember(&mut self, level: u8) {
        self.levels[usize::from(self.next)] = level;
        self.next = (self.next + 1) % PER_PEER as u8;
        self.filled = (self.filled + 1).min(PER_PEER as u8);
    }

    /// The lower median of its latest levels, if it has any.
    fn median(&self) -> Option<u8> {
        let n = usize::from(self.filled);
        if n == 0 {
            return None;
        }
        let mut levels = self.levels;
        let levels = &mut levels[..n];
        levels.sort_unstable();
        Some(levels[(n - 1) / 2])
    }
}

/// The sequencer's clipping bound and quarantine list.
#[derive(Debug)]
pub struct Influence {
    config: InfluenceConfig,
    quantizer: Quantizer,
    /// `|D|` of each magnitude level, 0..=127.
    level_value: [f32; 128],
    /// Who sent the latest contributions, oldest first.
    recent: VecDeque<PeerId>,
    /// How many of `recent` each peer sent.
    in_window: HashMap<PeerId, u32>,
    /// The current bound as a level; `None` while clipping is off or samples are too few.
    bound: Option<u8>,
    /// Contributions admitted since the bound was last computed.
    since_retune: u32,
    records: HashMap<PeerId, Record>,
    quarantined: HashSet<PeerId>,
}

impl Influence {
    /// No history yet: nothing is clipped until [`MIN_SAMPLES`] contributions were seen.
    pub fn new(
        config: InfluenceConfig,
        quantizer: Quantizer,
        quarantined: impl IntoIterator<Item = PeerId>,
    ) -> Self {
        let mut level_value = [0f32; 128];
        for (level, value) in level_value.iter_mut().enumerate() {
            *value = quantizer.decode(level as u8).abs();
        }
        Influence {
            config,
            quantizer,
            level_value,
            recent: VecDeque::with_capacity(WINDOW),
            in_window: HashMap::new(),
            bound: None,
            since_retune: 0,
            records: HashMap::new(),
            quarantined: quarantined.into_iter().collect(),
        }
    }

    /// Learns from entries already in the log (after a restart: the log's tail, as logged).
    pub fn seed(&mut self, entries: impl IntoIterator<Item = (PeerId, u8)>) {
        for (peer, byte) in entries {
            let level = self.quantizer.magnitude(byte);
            self.remember(peer, level);
        }
        self.retune();
    }

    /// Whether `peer` is quarantined.
    pub fn is_quarantined(&self, peer: PeerId) -> bool {
        self.quarantined.contains(&peer)
    }

    /// Clips one accepted contribution of `peer` and judges the peer by it.
    pub fn admit(&mut self, peer: PeerId, byte: u8) -> Admitted {
        let level = self.quantizer.magnitude(byte);
        let clipped = self.bound.is_some_and(|bound| level > bound);
        let logged = match self.bound {
            Some(bound) if clipped => self.quantizer.clip(byte, bound),
            _ => byte,
        };
        self.remember(peer, level);
        self.since_retune += 1;
        if self.since_retune >= RETUNE_EVERY || self.bound.is_none() {
            self.retune();
        }
        let record = self.records.entry(peer).or_default();
        record.clipped = (record.clipped << 1) | u64::from(clipped);
        record.seen = (record.seen + 1).min(JUDGED_OVER);
        let share = self.config.quarantine_share;
        let quarantined = share > 0.0
            && self.in_window.len() >= MIN_PEERS_JUDGED
            && record.seen == JUDGED_OVER
            && record.clipped.count_ones() as f32 >= share * JUDGED_OVER as f32;
        if quarantined {
            self.quarantined.insert(peer);
            record.clipped = 0;
            record.seen = 0;
        }
        Admitted {
            byte: logged,
            clipped,
            quarantined,
        }
    }

    /// Recomputes the bound from the window's peers.
    pub fn retune(&mut self) {
        self.since_retune = 0;
        self.bound = self.compute_bound();
    }

    fn compute_bound(&self) -> Option<u8> {
        if self.config.clip_factor <= 0.0 || self.recent.len() < MIN_SAMPLES {
            return None;
        }
        // The lower median of the window's peers' own medians.
        let mut medians: Vec<u8> = self
            .in_window
            .keys()
            .filter_map(|peer| self.records.get(peer)?.median())
            .collect();
        if medians.is_empty() {
            return None;
        }
        medians.sort_unstable();
        let median = medians[(medians.len() - 1) / 2];
        let limit = self.config.clip_factor * self.level_value[median as usize];
        let bound = (median..=127u8)
            .take_while(|&level| self.level_value[level as usize] <= limit)
            .last()
            .unwrap_or(median);
        Some(bound)
    }

    /// The bound as a value `|D|` (for the host's view), when clipping applies.
    pub fn bound_value(&self) -> Option<f32> {
        self.bound.map(|level| self.level_value[level as usize])
    }

    /// The id now belongs to someone else (a fresh join): forget its record.
    pub fn forget(&mut self, peer: PeerId) {
        if let Some(record) = self.records.get_mut(&peer) {
            *record = Record::default();
        }
        self.quarantined.remove(&peer);
    }

    /// The host released `peer` from quarantine: it starts with a clean record. Whether it was
    /// quarantined.
    pub fn release(&mut self, peer: PeerId) -> bool {
        if let Some(record) = self.records.get_mut(&peer) {
            record.clipped = 0;
            record.seen = 0;
        }
        self.quarantined.remove(&peer)
    }

    /// How many peers are quarantined.
    pub fn quarantined_count(&self) -> usize {
        self.quarantined.len()
    }

    fn remember(&mut self, peer: PeerId, level: u8) {
        if self.recent.len() == WINDOW
            && let Some(old) = self.recent.pop_front()
            && let Some(n) = self.in_window.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                // Out of the window: its record goes too, so memory stays within the window's
                // peers (a peer that sends less than once a window is clipped, never judged).
                self.in_window.remove(&old);
                self.records.remove(&old);
            }
        }
        self.recent.push_back(peer);
        *self.in_window.entry(peer).or_default() += 1;
        if level != 0 {
            self.records.entry(peer).or_default().remember(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: InfluenceConfig = InfluenceConfig {
        clip_factor: 4.0,
        quarantine_share: 0.5,
    };

    /// `n` honest contributions from 20 peers in turn: magnitudes spread evenly over 0.5..2
    /// (a fixed shuffle), both signs.
    fn honest(n: usize) -> Vec<(PeerId, u8)> {
        let q = Quantizer::default();
        (0..n)
            .map(|i| {
                let mag = 0.5 + 1.5 * ((i * 37) % 101) as f32 / 100.0;
                let g = if i % 2 == 0 { mag } else { -mag };
                (PeerId((i % 20) as u32), q.encode(g))
            })
            .collect()
    }

    fn seeded(entries: Vec<(PeerId, u8)>) -> Influence {
        let mut inf = Influence::new(ON, Quantizer::default(), []);
        inf.seed(entries);
        inf
    }

    #[test]
    fn nothing_is_clipped_before_enough_samples() {
        let mut inf = Influence::new(ON, Quantizer::default(), []);
        for _ in 0..MIN_SAMPLES {
            let a = inf.admit(PeerId(1), 0x7f);
            assert!(!a.clipped);
            assert_eq!(a.byte, 0x7f);
        }
        assert!(inf.bound_value().is_some());
    }

    #[test]
    fn the_largest_byte_is_clipped_to_a_few_times_the_median() {
        let q = Quantizer::default();
        let mut inf = seeded(honest(WINDOW));
        let bound = inf.bound_value().unwrap();
        // The median of 0.5..2 is about 1.25; four times that, rounded down to a level.
        assert!((4.0..=6.0).contains(&bound), "bound {bound}");
        let a = inf.admit(PeerId(2), 0xff);
        assert!(a.clipped);
        assert_eq!(
            q.decode(a.byte),
            -bound,
            "the sign is kept, the size bounded"
        );
        let small = q.encode(1.0);
        assert_eq!(inf.admit(PeerId(3), small).byte, small);
    }

    #[test]
    fn a_tenth_of_attackers_do_not_move_the_bound_much() {
        let clean = seeded(honest(WINDOW)).bound_value().unwrap();
        // Two attackers among 22 peers, sending a tenth of the contributions: the largest byte.
        let mut mixed = honest(WINDOW);
        for (i, e) in mixed.iter_mut().enumerate().step_by(10) {
            *e = (PeerId(90 + (i % 2) as u32), 0x7f);
        }
        let attacked = seeded(mixed).bound_value().unwrap();
        assert!(
            attacked / clean < 1.3,
            "bound {clean} without attackers, {attacked} with"
        );
    }

    #[test]
    fn one_peer_flooding_tiny_bytes_does_not_drag_the_bound_down() {
        let clean = seeded(honest(WINDOW)).bound_value().unwrap();
        // Nine contributions in ten from one peer, each the smallest non-zero byte.
        let mut flooded = honest(WINDOW);
        for (i, e) in flooded.iter_mut().enumerate() {
            if i % 10 != 0 {
                *e = (PeerId(77), 0x01);
            }
        }
        let inf = seeded(flooded);
        let bound = inf.bound_value().unwrap();
        assert!(
            bound / clean > 0.75,
            "bound {clean} without the flood, {bound} with"
        );
    }

    #[test]
    fn persistent_outliers_are_quarantined_and_honest_peers_are_not() {
        let mut inf = seeded(honest(WINDOW));
        let attacker = PeerId(66);
        let mut tipped = None;
        for (i, (good, byte)) in honest(10 * JUDGED_OVER as usize).into_iter().enumerate() {
            assert!(
                !inf.admit(good, byte).quarantined,
                "honest peer {good} at {i}"
            );
            if inf.admit(attacker, 0xff).quarantined {
                tipped.get_or_insert(i);
            }
        }
        assert_eq!(tipped, Some(JUDGED_OVER as usize - 1));
        assert!(inf.is_quarantined(attacker));
        assert!((0..20).all(|p| !inf.is_quarantined(PeerId(p))));
        assert!(inf.release(attacker));
        assert!(!inf.is_quarantined(attacker));
    }

    #[test]
    fn a_peer_alone_whose_magnitudes_jump_is_clipped_but_not_quarantined() {
        let q = Quantizer::default();
        let mut inf = Influence::new(ON, q, []);
        let alone = PeerId(1);
        let mut clipped = 0;
        for i in 0..10 * JUDGED_OVER {
            // Its magnitudes grow eight-fold after a while, and stay there.
            let g = if i < 4 * JUDGED_OVER { 0.1 } else { 0.8 };
            let a = inf.admit(alone, q.encode(if i % 2 == 0 { g } else { -g }));
            clipped += u32::from(a.clipped);
            assert!(!a.quarantined, "quarantined at {i}");
        }
        assert!(clipped >= JUDGED_OVER / 2, "clipped {clipped}");
        // The same jump among three peers, one of them alone in it, does quarantine it.
        let mut inf = Influence::new(ON, q, []);
        let mut tipped = false;
        for i in 0..10 * JUDGED_OVER {
            for peer in [PeerId(2), PeerId(3)] {
                inf.admit(peer, q.encode(0.1));
            }
            let g = if i < 2 * JUDGED_OVER { 0.1 } else { 0.8 };
            tipped |= inf.admit(alone, q.encode(g)).quarantined;
        }
        assert!(tipped && inf.is_quarantined(alone));
    }

    #[test]
    fn clipping_off_clips_nothing_and_quarantines_nobody() {
        let off = InfluenceConfig {
            clip_factor: 0.0,
            quarantine_share: 0.5,
        };
        let mut inf = Influence::new(off, Quantizer::default(), []);
        inf.seed(honest(WINDOW));
        for _ in 0..2 * JUDGED_OVER {
            let a = inf.admit(PeerId(1), 0x7f);
            assert!(!a.clipped && !a.quarantined && a.byte == 0x7f);
        }
        assert_eq!(inf.bound_value(), None);
    }
}
