//! Limits per network address: how many connections and joined peers one address holds, and
//! how fast it may register new peers.
//!
//! An address is an IPv4 address or an IPv6 /64 (what one subscriber usually gets), so a host
//! with a block of IPv6 addresses counts once. Counts are held by guards: a connection's or a
//! peer's guard gives its place back when it drops, whatever ended it.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// What limits count as one network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(IpAddr);

impl Address {
    /// The address `ip` counts as: itself for IPv4 (also when mapped into IPv6), its /64 for
    /// IPv6.
    pub fn of(ip: IpAddr) -> Address {
        match ip {
            IpAddr::V4(v4) => Address(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Address(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Address(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// At most `per_address` places per address and `total` in all.
#[derive(Debug)]
pub struct AddressTally {
    total: usize,
    per_address: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_address: HashMap<Address, usize>,
}

/// Why a place was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPlace {
    /// `total` places are taken.
    Full(usize),
    /// This address holds its `per_address` places.
    AddressFull(usize),
}

/// One place in an [`AddressTally`], given back on drop.
#[derive(Debug)]
pub struct Place {
    tally: Arc<AddressTally>,
    address: Address,
}

impl AddressTally {
    /// A tally of `total` places, `per_address` of them (0: any number) for one address.
    pub fn new(total: usize, per_address: usize) -> Arc<AddressTally> {
        Arc::new(AddressTally {
            total,
            per_address: if per_address == 0 {
                usize::MAX
            } else {
                per_address
            },
            held: Mutex::default(),
        })
    }

    /// Takes a place for `address`, if one is free.
    pub fn take(self: &Arc<Self>, address: Address) -> Result<Place, NoPlace> {
        let mut held = self.held.lock().expect("address tally poisoned");
        if held.total >= self.total {
            return Err(NoPlace::Full(self.total));
        }
        let mine = held.by_address.entry(address).or_default();
        if *mine >= self.per_address {
            return Err(NoPlace::AddressFull(self.per_address));
        }
        *mine += 1;
        held.total += 1;
        Ok(Place {
            tally: self.clone(),
            address,
        })
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.held.lock().expect("address tally poisoned").total
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.tally.held.lock().expect("address tally poisoned");
        held.total -= 1;
        if let Some(mine) = held.by_address.get_mut(&self.address) {
            *mine -= 1;
            if *mine == 0 {
                held.by_address.remove(&self.address);
            }
        }
    }
}

/// New joins per minute from one address.
pub struct JoinRate {
    limiter: Option<DefaultKeyedRateLimiter<Address>>,
}

impl JoinRate {
    /// At most `per_minute` joins a minute from one address (bursts of as many); 0: no limit.
    pub fn new(per_minute: u32) -> JoinRate {
        JoinRate {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    /// Whether `address` may join now (counting this join).
    pub fn allow(&self, address: Address) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let allowed = limiter.check_key(&address).is_ok();
        // Addresses that have not joined for a minute are forgotten, so the table stays as
        // small as the set of recent joiners.
        if limiter.len() > 4096 {
            limiter.retain_recent();
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::of(s.parse().unwrap())
    }

    #[test]
    fn an_ipv6_subnet_counts_as_one_address() {
        assert_eq!(addr("2001:db8:1:2::1"), addr("2001:db8:1:2:ffff::9"));
        assert_ne!(addr("2001:db8:1:2::1"), addr("2001:db8:1:3::1"));
        assert_eq!(addr("::ffff:10.0.0.1"), addr("10.0.0.1"));
        assert_eq!(addr("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn places_are_limited_per_address_and_given_back() {
        let tally = AddressTally::new(3, 2);
        let a = addr("10.0.0.1");
        let first = tally.take(a).unwrap();
        let _second = tally.take(a).unwrap();
        assert_eq!(tally.take(a).unwrap_err(), NoPlace::AddressFull(2));
        let _other = tally.take(addr("10.0.0.2")).unwrap();
        assert_eq!(tally.take(addr("10.0.0.3")).unwrap_err(), NoPlace::Full(3));
        drop(first);
        assert_eq!(tally.taken(), 2);
        assert!(tally.take(a).is_ok());
    }

    #[test]
    fn joins_are_rate_limited_per_address() {
        let rate = JoinRate::new(2);
        let a = addr("10.0.0.1");
        assert!(rate.allow(a) && rate.allow(a));
        assert!(!rate.allow(a));
        assert!(rate.allow(addr("10.0.0.2")));
        assert!(JoinRate::new(0).allow(a));
    }
}
