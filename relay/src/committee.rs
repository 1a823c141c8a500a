//! Committee rounds: several peers evaluate one shared direction, and the log takes the median
//! of their bytes.
//!
//! Clipping bounds how far one byte moves the weights, but a peer that sends honest-sized bytes
//! with the wrong sign passes any magnitude bound. Against that the estimates must be compared,
//! and estimates along different directions cannot be: a committee job therefore has no
//! per-peer directions. The relay opens rounds; round `r`'s direction is the one of
//! `(job, PeerId::COMMITTEE, r)`. It assigns each round to `size` distinct peers, and when all
//! of them have voted it logs `(COMMITTEE, r, median)`: replicas apply that entry like any
//! other. A minority of a round's members cannot move its median past the honest votes'
//! range.
//!
//! Each peer holds [`ASSIGNED_PER_PEER`] assignments: every vote on one of them (counted, or
//! too late) is answered with a new one, so a peer works at its own pace and a round waits
//! only for its slowest member. A member that leaves gives its unvoted places back; a round
//! that still lacks votes after the timeout is decided by the votes it has if they are a
//! majority of `size` (else its voters hear `RoundClosed`), so one silent member stalls
//! nothing for long.
//!
//! Round numbers are never reused: the relay reserves them in blocks in its store (see
//! [`Committees::reservation_due`]) before handing any out, so a restart continues above every
//! round it may have assigned.

use protocol::{Counter, PeerId, Quantizer, RejectReason};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Rounds each peer holds assigned and not yet voted on.
pub const ASSIGNED_PER_PEER: usize = 8;
/// Round numbers are reserved in the store this many at a time.
pub const RESERVE_BLOCK: u64 = 1 << 16;

/// A round decided: the entry to log and whose votes made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub round: Counter,
    pub byte: u8,
    pub voters: Vec<PeerId>,
}

/// What closing rounds produced: the decided ones, and voters of rounds too thin to decide.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closed {
    pub decided: Vec<Decided>,
    pub abandoned: Vec<(PeerId, Counter)>,
}

#[derive(Debug)]
struct Round {
    opened: Instant,
    /// Peers assigned this round, whether or not they have voted.
    members: Vec<PeerId>,
    /// Votes so far (already clipped by the relay's influence bound).
    votes: Vec<(PeerId, u8)>,
}

/// The open rounds and who holds which.
#[derive(Debug)]
pub struct Committees {
    size: usize,
    timeout: Duration,
    quantizer: Quantizer,
    next_round: u64,
    /// Round numbers below this are reserved in the store.
    reserved: u64,
    open: BTreeMap<u64, Round>,
    /// Open rounds with fewer members than `size`.
    lacking: BTreeSet<u64>,
    /// Each peer's assigned rounds it has not voted on, oldest first.
    assigned: HashMap<PeerId, Vec<u64>>,
}

impl Committees {
    /// Rounds of `size` members, numbered from `next_round` (the store's reservation), decided
    /// after at most `timeout`.
    pub fn new(size: usize, timeout: Duration, quantizer: Quantizer, next_round: u64) -> Self {
        Committees {
            size,
            timeout,
            quantizer,
            next_round,
            reserved: next_round,
            open: BTreeMap::new(),
            lacking: BTreeSet::new(),
            assigned: HashMap::new(),
        }
    }

    /// Members per round.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Votes that decide a round that waited out its timeout: a majority of its size.
    pub fn quorum(&self) -> usize {
        self.size / 2 + 1
    }

    /// Rounds open now.
    pub fn open_rounds(&self) -> usize {
        self.open.len()
    }

    /// The rounds `peer` should be handed now to hold [`ASSIGNED_PER_PEER`].
    pub fn top_up(&mut self, peer: PeerId, now: Instant) -> Vec<Counter> {
        let held = self.assigned.get(&peer).map_or(0, Vec::len);
        (held..ASSIGNED_PER_PEER)
            .map(|_| self.assign(peer, now))
            .collect()
    }

    /// Hands `peer` one round: the oldest open one that lacks members and does not have it yet,
    /// else a new one.
    fn assign(&mut self, peer: PeerId, now: Instant) -> Counter {
        let open = &self.open;
        let fillable = self
            .lacking
            .iter()
            .copied()
            .find(|n| !open[n].members.contains(&peer));
        let number = match fillable {
            Some(number) => {
                let round = self.open.get_mut(&number).expect("lacking rounds are open");
                round.members.push(peer);
                if round.members.len() == self.size {
                    self.lacking.remove(&number);
                }
                number
            }
            None => {
                let number = self.next_round;
                self.next_round += 1;
                self.open.insert(
                    number,
                    Round {
                        opened: now,
                        members: vec![peer],
                        votes: Vec::with_capacity(self.size),
                    },
                );
                self.lacking.insert(number);
                number
            }
        };
        self.assigned.entry(peer).or_default().push(number);
        Counter(number)
    }

    /// When round numbers handed out are about to pass the store's reservation: the new
    /// reservation to write (durably, before any assignment made since is sent).
    pub fn reservation_due(&mut self) -> Option<u64> {
        if self.next_round < self.reserved {
            return None;
        }
        self.reserved = self.next_round + RESERVE_BLOCK;
        Some(self.reserved)
    }

    /// Counts `peer`'s vote on `round`. `Ok(Some)` when it completed the round. A vote on a
    /// round the peer was not assigned is `NotAssigned`; on one assigned but closed since,
    /// `RoundClosed` (the assignment is used up either way, so top the peer up after both
    /// except `NotAssigned`).
    pub fn vote(
        &mut self,
        peer: PeerId,
        round: Counter,
        byte: u8,
    ) -> Result<Option<Decided>, (RejectReason, String)> {
        let held = self.assigned.get_mut(&peer);
        let Some(at) = held
            .as_ref()
            .and_then(|held| held.iter().position(|&r| r == round.0))
        else {
            return Err((
                RejectReason::NotAssigned,
                format!("round {round} is not assigned to this peer"),
            ));
        };
        held.expect("found above").remove(at);
        let Some(open) = self.open.get_mut(&round.0) else {
            return Err((
                RejectReason::RoundClosed,
                format!("round {round} closed before this vote arrived"),
            ));
        };
        open.votes.push((peer, byte));
        if open.votes.len() < self.size {
            return Ok(None);
        }
        let done = self.open.remove(&round.0).expect("open above");
        self.lacking.remove(&round.0);
        Ok(Some(self.decide(round.0, done)))
    }

    /// Whether `peer` holds `round`, assigned and not voted on.
    pub fn holds(&self, peer: PeerId, round: Counter) -> bool {
        self.assigned
            .get(&peer)
            .is_some_and(|held| held.contains(&round.0))
    }

    /// `peer` gives up its place in `round` without voting (its vote was turned down): another
    /// peer may take it.
    pub fn forfeit(&mut self, peer: PeerId, round: Counter) {
        if let Some(held) = self.assigned.get_mut(&peer) {
            held.retain(|&r| r != round.0);
        }
        self.give_back(peer, round.0);
    }

    /// Takes `peer` off `number`'s members (it holds it no more and did not vote).
    fn give_back(&mut self, peer: PeerId, number: u64) {
        let Some(round) = self.open.get_mut(&number) else {
            return;
        };
        if round.votes.iter().any(|&(p, _)| p == peer) {
            return;
        }
        round.members.retain(|&m| m != peer);
        if round.members.is_empty() {
            // Nobody holds or voted on it: gone for good.
            self.open.remove(&number);
            self.lacking.remove(&number);
        } else {
            self.lacking.insert(number);
        }
    }

    /// `peer` left: its unvoted places go back to their rounds (for others to fill).
    pub fn leave(&mut self, peer: PeerId) {
        for number in self.assigned.remove(&peer).unwrap_or_default() {
            self.give_back(peer, number);
        }
    }

    /// When the oldest open round times out.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.open.values().map(|r| r.opened + self.timeout).min()
    }

    /// Closes every round open for the timeout: decided by its votes if they are a quorum.
    pub fn close_timed_out(&mut self, now: Instant) -> Closed {
        let due: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, r)| now >= r.opened + self.timeout)
            .map(|(&n, _)| n)
            .collect();
        let mut closed = Closed::default();
        for number in due {
            let round = self.open.remove(&number).expect("listed above");
            self.lacking.remove(&number);
            if round.votes.len() >= self.quorum() {
                closed.decided.push(self.decide(number, round));
            } else {
                closed
                    .abandoned
                    .extend(round.votes.iter().map(|&(peer, _)| (peer, Counter(number))));
            }
        }
        closed
    }

    fn decide(&self, number: u64, round: Round) -> Decided {
        let bytes: Vec<u8> = round.votes.iter().map(|&(_, b)| b).collect();
        Decided {
            round: Counter(number),
            byte: self.quantizer.median(&bytes),
            voters: round.votes.into_iter().map(|(p, _)| p).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committees(size: usize) -> Committees {
        Committees::new(size, Duration::from_secs(10), Quantizer::default(), 0)
    }

    fn byte(value: f32) -> u8 {
        Quantizer::default().encode(value)
    }

    #[test]
    fn the_median_ignores_a_minority_however_extreme() {
        let q = Quantizer::default();
        let honest = [byte(0.01), byte(0.02), byte(0.015)];
        let decided = q.median(&[honest[0], honest[1], byte(-1e9), honest[2], byte(-1e9)]);
        assert_eq!(decided, byte(0.01), "two of five cannot flip the sign");
        assert_eq!(q.median(&[byte(0.02), byte(-0.02)]), byte(0.0));
        assert_eq!(q.median(&[byte(0.03)]), byte(0.03));
    }

    #[test]
    fn each_round_gets_distinct_members_and_is_decided_when_all_voted() {
        let mut c = committees(3);
        let now = Instant::now();
        let a = c.top_up(PeerId(1), now);
        let b = c.top_up(PeerId(2), now);
        let d = c.top_up(PeerId(3), now);
        assert_eq!(a.len(), ASSIGNED_PER_PEER);
        // Everyone shares the same rounds: each peer joined the oldest rounds lacking members.
        assert_eq!(a, b);
        assert_eq!(b, d);
        assert!(
            c.top_up(PeerId(1), now).is_empty(),
            "already holds its share"
        );
        let round = a[0];
        assert_eq!(c.vote(PeerId(1), round, byte(0.01)), Ok(None));
        assert_eq!(c.vote(PeerId(2), round, byte(-0.5)), Ok(None));
        assert_eq!(
            c.vote(PeerId(1), round, byte(0.01)).unwrap_err().0,
            RejectReason::NotAssigned,
            "one vote per member"
        );
        let decided = c.vote(PeerId(3), round, byte(0.03)).unwrap().unwrap();
        assert_eq!(decided.byte, byte(0.01));
        assert_eq!(decided.voters, vec![PeerId(1), PeerId(2), PeerId(3)]);
        // Each voter is owed one more round (a new one: the others are full); a fourth peer
        // fills that open place before any new round.
        let again = c.top_up(PeerId(1), now);
        assert_eq!(again, vec![Counter(ASSIGNED_PER_PEER as u64)]);
        assert_eq!(c.top_up(PeerId(4), now)[0], again[0]);
    }

    #[test]
    fn a_round_missing_votes_closes_on_its_majority_or_not_at_all() {
        let mut c = committees(3);
        let t0 = Instant::now();
        for peer in 1..=3 {
            c.top_up(PeerId(peer), t0);
        }
        let (first, second) = (Counter(0), Counter(1));
        c.vote(PeerId(1), first, byte(0.02)).unwrap();
        c.vote(PeerId(2), first, byte(0.04)).unwrap();
        c.vote(PeerId(1), second, byte(0.02)).unwrap();
        assert_eq!(
            c.close_timed_out(t0 + Duration::from_secs(9)),
            Closed::default()
        );
        assert_eq!(c.next_timeout(), Some(t0 + Duration::from_secs(10)));
        let closed = c.close_timed_out(t0 + Duration::from_secs(10));
        assert_eq!(closed.decided.len(), 1);
        assert_eq!(closed.decided[0].round, first);
        assert_eq!(closed.decided[0].byte, byte(0.03));
        assert!(closed.abandoned.contains(&(PeerId(1), second)));
        // The late member's vote is turned down, and uses up its assignment.
        assert_eq!(
            c.vote(PeerId(3), first, byte(0.0)).unwrap_err().0,
            RejectReason::RoundClosed
        );
        assert_eq!(c.open_rounds(), 0);
    }

    #[test]
    fn a_leaving_member_frees_its_places_for_others() {
        let mut c = committees(2);
        let now = Instant::now();
        let rounds = c.top_up(PeerId(1), now);
        c.vote(PeerId(1), rounds[0], byte(0.01)).unwrap();
        c.leave(PeerId(1));
        // Round 0 keeps its vote and waits for a second member; the others were only held.
        assert_eq!(c.open_rounds(), 1);
        let got = c.top_up(PeerId(2), now);
        assert_eq!(got[0], rounds[0]);
        let decided = c.vote(PeerId(2), rounds[0], byte(0.03)).unwrap().unwrap();
        assert_eq!(decided.voters, vec![PeerId(1), PeerId(2)]);
    }

    #[test]
    fn round_numbers_are_reserved_before_they_are_handed_out() {
        let mut c = Committees::new(2, Duration::from_secs(1), Quantizer::default(), 500);
        assert_eq!(c.reservation_due(), Some(500 + RESERVE_BLOCK));
        let rounds = c.top_up(PeerId(0), Instant::now());
        assert_eq!(rounds[0], Counter(500));
        assert_eq!(c.reservation_due(), None);
    }
}
