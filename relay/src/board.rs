//! The host's view of each peer, for `/admin`: counts, rates, the last hash report and the
//! backend it said it computes on. Updated after the decisions that matter (the sequencer's
//! verdicts, the follower's comparisons), never read by them.

use crate::rate::RateWindow;
use protocol::PeerId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Rows of peers that left stay this long, so a host sees who just went.
const KEEP_LEFT: Duration = Duration::from_secs(300);
/// Longest backend description kept from a peer.
const BACKEND_CHARS: usize = 64;

/// Every peer seen recently.
#[derive(Debug, Default)]
pub struct PeerBoard {
    rows: Mutex<BTreeMap<PeerId, Row>>,
}

#[derive(Debug)]
struct Row {
    backend: String,
    since: Instant,
    left: Option<Instant>,
    accepted: u64,
    rejected: u64,
    /// Contributions logged clipped.
    clipped: u64,
    quarantined: bool,
    rate: RateWindow,
    last_hash: Option<(u64, bool)>,
    /// The training loss it reported last.
    last_loss: Option<f32>,
}

impl Row {
    fn new() -> Row {
        Row {
            backend: String::new(),
            since: Instant::now(),
            left: None,
            accepted: 0,
            rejected: 0,
            clipped: 0,
            quarantined: false,
            rate: RateWindow::default(),
            last_hash: None,
            last_loss: None,
        }
    }
}

/// One peer as `GET /api/admin/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub peer: u64,
    pub backend: String,
    pub connected: bool,
    /// Seconds since it joined (or, once it left, how long it stayed).
    pub online_s: f64,
    pub accepted: u64,
    pub rejected: u64,
    /// Of its accepted contributions, those logged clipped to the relay's bound.
    pub clipped: u64,
    /// Its contributions are rejected until the host releases it.
    pub quarantined: bool,
    pub contributions_per_s: f64,
    /// The version of its last hash report, and whether it matched the relay's replica.
    pub last_hash_version: Option<u64>,
    pub last_hash_agreed: Option<bool>,
}

impl PeerBoard {
    fn with(&self, f: impl FnOnce(&mut BTreeMap<PeerId, Row>)) {
        f(&mut self.rows.lock().expect("peer board poisoned"));
    }

    /// A peer's socket joined, computing on `backend` (what it said; free text). A `fresh` peer
    /// starts a new row (its id may have been someone else's); a resumed one keeps its counts.
    pub fn joined(&self, peer: PeerId, backend: &str, fresh: bool) {
        let backend: String = backend
            .chars()
            .filter(|c| !c.is_control())
            .take(BACKEND_CHARS)
            .collect();
        self.with(|rows| {
            forget_old(rows);
            if fresh {
                rows.insert(peer, Row::new());
            }
            let row = rows.entry(peer).or_insert_with(Row::new);
            row.backend = if backend.is_empty() {
                "not said".into()
            } else {
                backend
            };
            row.since = Instant::now();
            row.left = None;
        });
    }

    pub fn left(&self, peer: PeerId) {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&peer) {
                row.left = Some(Instant::now());
            }
        });
    }

    /// Contributions of one tick, accepted and rejected, per peer.
    pub fn verdicts(&self, accepted: &[(PeerId, u64)], rejected: &[(PeerId, u64)]) {
        self.with(|rows| {
            for &(peer, n) in accepted {
                if let Some(row) = rows.get_mut(&peer) {
                    row.accepted += n;
                    row.rate.record(row.accepted);
                }
            }
            for &(peer, n) in rejected {
                if let Some(row) = rows.get_mut(&peer) {
                    row.rejected += n;
                }
            }
        });
    }

    /// Contributions of one tick logged clipped, per peer.
    pub fn clipped(&self, clipped: &[(PeerId, u64)]) {
        self.with(|rows| {
            for &(peer, n) in clipped {
                if let Some(row) = rows.get_mut(&peer) {
                    row.clipped += n;
                }
            }
        });
    }

    /// The sequencer quarantined `peer`, or the host released it.
    pub fn quarantined(&self, peer: PeerId, quarantined: bool) {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&peer) {
                row.quarantined = quarantined;
            }
        });
    }

    /// The follower compared the peer's hash at `version`.
    pub fn hash(&self, peer: PeerId, version: u64, agreed: bool) {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&peer) {
                row.last_hash = Some((version, agreed));
            }
        });
    }

    /// The peer reported `loss` (finite and not negative).
    pub fn loss(&self, peer: PeerId, loss: f32) {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&peer) {
                row.last_loss = Some(loss);
            }
        });
    }

    /// The swarm's loss as the page shows it: the median of the connected peers' latest reports
    /// (the lower one of the middle two), so that no single peer sets it.
    pub fn median_loss(&self) -> Option<f32> {
        let rows = self.rows.lock().expect("peer board poisoned");
        let mut losses: Vec<f32> = rows
            .values()
            .filter(|r| r.left.is_none())
            .filter_map(|r| r.last_loss)
            .collect();
        losses.sort_by(f32::total_cmp);
        let n = losses.len();
        (n > 0).then(|| losses[(n - 1) / 2])
    }

    /// Connected peers whose latest compared hash differed from the relay's.
    pub fn diverged(&self) -> u64 {
        let rows = self.rows.lock().expect("peer board poisoned");
        rows.values()
            .filter(|r| r.left.is_none() && r.last_hash.is_some_and(|(_, agreed)| !agreed))
            .count() as u64
    }

    /// Connected peers first, then those that left in the last five minutes; older ones are
    /// forgotten.
    pub fn view(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let mut rows = self.rows.lock().expect("peer board poisoned");
        forget_old(&mut rows);
        let mut view: Vec<PeerView> = rows
            .iter()
            .map(|(peer, r)| PeerView {
                peer: u64::from(peer.0),
                backend: r.backend.clone(),
                connected: r.left.is_none(),
                online_s: r.left.unwrap_or(now).duration_since(r.since).as_secs_f64(),
                accepted: r.accepted,
                rejected: r.rejected,
                clipped: r.clipped,
                quarantined: r.quarantined,
                contributions_per_s: if r.left.is_none() {
                    r.rate.per_second()
                } else {
                    0.0
                },
                last_hash_version: r.last_hash.map(|h| h.0),
                last_hash_agreed: r.last_hash.map(|h| h.1),
            })
            .collect();
        view.sort_by_key(|p| (!p.connected, p.peer));
        view
    }
}

/// Drops the rows of peers that left more than five minutes ago.
fn forget_old(rows: &mut BTreeMap<PeerId, Row>) {
    let now = Instant::now();
    rows.retain(|_, r| r.left.is_none_or(|t| now.duration_since(t) < KEEP_LEFT));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_counts_per_peer_and_remembers_who_left() {
        let board = PeerBoard::default();
        board.joined(PeerId(2), "wgpu, 16 lanes", true);
        board.joined(PeerId(1), "cpu\u{7}", true);
        board.verdicts(&[(PeerId(1), 5), (PeerId(2), 3)], &[(PeerId(2), 1)]);
        board.verdicts(&[(PeerId(1), 2), (PeerId(9), 4)], &[]);
        board.hash(PeerId(2), 256, false);
        board.left(PeerId(1));
        let view = board.view();
        assert_eq!(view.len(), 2, "peer 9 never joined: {view:?}");
        // Connected first.
        assert_eq!((view[0].peer, view[0].connected), (2, true));
        assert_eq!((view[0].accepted, view[0].rejected), (3, 1));
        assert_eq!(view[0].backend, "wgpu, 16 lanes");
        assert_eq!(
            (view[0].last_hash_version, view[0].last_hash_agreed),
            (Some(256), Some(false))
        );
        assert_eq!((view[1].peer, view[1].connected), (1, false));
        assert_eq!(view[1].accepted, 7);
        assert_eq!(view[1].backend, "cpu", "control characters are dropped");
        assert_eq!(view[1].contributions_per_s, 0.0);
        // Peer 2 still disagrees; peer 1 left.
        assert_eq!(board.diverged(), 1);
        board.joined(PeerId(1), "cpu", false);
        assert_eq!(
            board.view()[0].accepted,
            7,
            "a resumed peer keeps its counts"
        );
        board.joined(PeerId(1), "cpu", true);
        assert_eq!(
            board.view()[0].accepted,
            0,
            "a fresh peer on a reused id starts anew"
        );
    }

    #[test]
    fn the_swarm_loss_is_the_median_of_connected_peers() {
        let board = PeerBoard::default();
        assert_eq!(board.median_loss(), None);
        for (peer, loss) in [(1, 0.5), (2, 1e30), (3, 0.4)] {
            board.joined(PeerId(peer), "cpu", true);
            board.loss(PeerId(peer), loss);
        }
        assert_eq!(board.median_loss(), Some(0.5));
        board.joined(PeerId(4), "cpu", true);
        board.loss(PeerId(4), 0.0);
        assert_eq!(
            board.median_loss(),
            Some(0.4),
            "the lower of the middle two"
        );
        board.left(PeerId(2));
        assert_eq!(board.median_loss(), Some(0.4));
    }
}
