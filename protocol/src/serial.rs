//! 16-bit serial numbers (RFC 1982 style) for the uplink.
//!
//! A `Contribute` carries only the low 16 bits of its counter and of its base version: together
//! with the tag and the byte that is 6 bytes, 12 on the wire with WebSocket framing and mask. The
//! relay knows the peer's last counter, and a version the peer's replica has certainly reached
//! (the version it joined at, or its latest hash report), which is enough to recover the full
//! values: counters only move forward, and so do a peer's base versions. Recovering a base version
//! from the log's head instead would wrap: a base 65 536 + k versions behind would read as k
//! behind and pass any staleness bound above k.

/// The low 16 bits of a counter or a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Serial(pub u16);

impl Serial {
    /// The low 16 bits of `value`.
    pub fn of(value: u64) -> Self {
        Serial(value as u16)
    }

    /// The smallest value greater than `last` whose low bits are these, if it lies within
    /// 32 768 of `last`; `None` means the value went backwards (a replay or reordering).
    pub fn after(self, last: Option<u64>) -> Option<u64> {
        let next = last.map_or(0, |l| l + 1);
        let ahead = self.0.wrapping_sub(next as u16);
        (ahead < 0x8000).then(|| next + u64::from(ahead))
    }

    /// The greatest value not above `current` whose low bits are these; `None` if it would be
    /// negative (a version the log has not reached).
    pub fn at_or_before(self, current: u64) -> Option<u64> {
        let behind = (current as u16).wrapping_sub(self.0);
        current.checked_sub(u64::from(behind))
    }

    /// The smallest value not below `floor` whose low bits are these: exact for any value less
    /// than 65 536 above `floor`.
    pub fn at_or_after(self, floor: u64) -> u64 {
        floor + u64::from(self.0.wrapping_sub(floor as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn counters_are_recovered_after_the_last(last in proptest::option::of(0u64..1 << 40), step in 1u64..0x8000) {
            let value = last.map_or(step - 1, |l| l + step);
            prop_assert_eq!(Serial::of(value).after(last), Some(value));
        }

        #[test]
        fn counters_that_go_backwards_are_refused(last in 0x10000u64..1 << 40, back in 0u64..0x8000) {
            prop_assert_eq!(Serial::of(last - back).after(Some(last)), None);
        }

        #[test]
        fn versions_are_recovered_at_or_after_a_floor(floor in 0u64..1 << 40, ahead in 0u64..0x10000) {
            prop_assert_eq!(Serial::of(floor + ahead).at_or_after(floor), floor + ahead);
        }

        #[test]
        fn versions_are_recovered_at_or_before_current(current in 0u64..1 << 40, lag in 0u64..0x10000) {
            prop_assume!(lag <= current);
            prop_assert_eq!(Serial::of(current - lag).at_or_before(current), Some(current - lag));
        }
    }

    #[test]
    fn versions_ahead_of_a_young_log_are_none() {
        assert_eq!(Serial(10).at_or_before(5), None);
        assert_eq!(Serial(5).at_or_before(5), Some(5));
    }
}
