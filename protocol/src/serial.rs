//! 16-bit serial numbers (RFC 1982 style) for the uplink.
//!
//! A `Contribute` carries only the low 16 bits of its counter and of its base version: together
//! with the tag and the byte that is 6 bytes, 12 on the wire with WebSocket framing and mask. The
//! relay knows the peer's last counter and its own current version, which is enough to recover
//! the full values: counters only move forward, and a base version older than 65 536 entries is
//! stale under any staleness bound the relay accepts.

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
