//! Wire messages and their binary codec.
//!
//! Every message is one WebSocket binary frame: a tag byte, then the fields in order. Integers
//! are LEB128 varints (see [`crate::varint`]), so identifiers below 128 cost one byte; strings and
//! lists are a varint length then their contents. Hashes are 32 raw bytes; losses 4 bytes f32 LE.
//!
//! Encoded sizes, with `v(x)` the varint length of `x` (1 byte below 128, 2 below 16 384):
//!
//! | message | direction | bytes |
//! |---|---|---|
//! | `Hello` | peer → relay | 1 + 2 + v(job) + 1 + (v(peer) + 16)? + v(from) + v(len) + token |
//! | `Welcome` | relay → peer | 1 + v(peer) + v(job) + v(version) + v(next_counter) + 16 + v(rate_limit) |
//! | `Contribute`, one | peer → relay | 1 + 2 + 2 + 1 (16-bit serials, see [`crate::serial`]) |
//! | `Contribute`, a run of n ≥ 2 | peer → relay | 1 + 2 + 2 + v(n) + n |
//! | `Accepted` | relay → peer | 1 + v(counter) + v(version) |
//! | `Rejected` | relay → peer | 1 + v(counter) + 1 + v(len) + detail |
//! | `LogBatch` | relay → peers | 1 + v(first_version) + v(n) + Σ (v(2·peer+f) + [v(counter)] + 1) |
//! | `CounterTable` | relay → peer | 1 + v(version) + v(n) + Σ (v(peer) + v(counter)) |
//! | `HashReport` | peer → relay | 1 + v(version) + 32 |
//! | `LossReport` | peer → relay | 1 + v(version) + 4 |
//! | `Resync` | relay → peer | 1 + v(version) + v(len) + reason |
//! | `Error` | either | 1 + v(code) + v(len) + message |
//! | `Assign` | relay → peer | 1 + v(round) |
//! | `Vote` | peer → relay | 1 + v(round) + 2 + 1 |
//!
//! A `Contribute` of one estimate is 6 bytes (12 on the wire); a run of a step's lanes, or of
//! steps computed back to back, approaches one byte per estimate. A `LogBatch` entry whose counter follows
//! on from that peer's previous one (flag `f` clear, see [`crate::log`]) is 2 bytes for peers
//! below 64 and 3 below 8 192. Decoding accepts exactly these layouts: unknown tags, short or
//! trailing bytes, overlong varints and oversized lengths are errors, never panics.

use crate::serial::Serial;
use crate::{Counter, DecodeError, JobId, PeerId, Resume, ResumeSecret, Version, varint};

/// Longest string field accepted by the decoder (tokens, reasons, error messages).
pub const MAX_STRING: u64 = 1024;
/// Most entries in one `LogBatch` accepted by the decoder.
pub const MAX_BATCH: u64 = 65_536;
/// Most estimates in one `Contribute` accepted by the decoder (a relay's frame limit, 4 KiB by
/// default, holds about four times as many).
pub const MAX_RUN: u64 = 1024;
/// Most peers in one `CounterTable` accepted by the decoder: every peer id that ever
/// contributed is in it, so it is far above any batch (and each takes at least two bytes of
/// the frame, which bounds what decoding allocates).
pub const MAX_TABLE: u64 = 1 << 24;

/// SHA-256 over a replica's f32 weight bits in parameter order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightHash(pub [u8; 32]);

impl std::fmt::Debug for WeightHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightHash({})", self.to_hex())
    }
}

impl WeightHash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One position of the log: whose direction, and the byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    pub peer: PeerId,
    pub counter: Counter,
    pub byte: u8,
}

/// A log entry as a `LogBatch` carries it: the counter only when it does not follow on from the
/// peer's previous entry. [`crate::LogCursor`] packs and resolves these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedEntry {
    pub peer: PeerId,
    pub counter: Option<Counter>,
    pub byte: u8,
}

/// Why the relay refused a contribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// `base_version` is older than the job's staleness bound allows.
    Stale = 1,
    /// The counter is not greater than the peer's last accepted counter.
    CounterNotIncreasing = 2,
    /// The peer sends faster than its rate limit.
    RateLimited = 3,
    /// The job is paused by its administrator.
    Paused = 4,
    /// `base_version` is ahead of the log.
    FromTheFuture = 5,
    /// The relay quarantined this peer: too many of its recent bytes lay far outside everyone
    /// else's (see the relay's clipping bound). It may still follow the log.
    Quarantined = 6,
    /// The committee round closed before this vote arrived (its other members voted, or it
    /// waited too long for them).
    RoundClosed = 7,
    /// This peer was not assigned that round, or the job takes committee votes rather than
    /// contributions (or the other way round).
    NotAssigned = 8,
}

impl RejectReason {
    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => Self::Stale,
            2 => Self::CounterNotIncreasing,
            3 => Self::RateLimited,
            4 => Self::Paused,
            5 => Self::FromTheFuture,
            6 => Self::Quarantined,
            7 => Self::RoundClosed,
            8 => Self::NotAssigned,
            other => {
                return Err(DecodeError::OutOfRange {
                    field: "reason",
                    value: u64::from(other),
                });
            }
        })
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// First frame from a peer: which job, which protocol, the peer id it had before with its
    /// resume secret (to resume its counter after a reconnect), the version its replica is at
    /// (the log is streamed from there) and an optional join token.
    Hello {
        protocol: u16,
        job: JobId,
        resume: Option<Resume>,
        from: Version,
        token: String,
    },
    /// The relay's answer to `Hello`: the peer's id, the log's current version, the next
    /// counter the peer must use, and the secret that lets it resume this id.
    Welcome {
        peer: PeerId,
        job: JobId,
        version: Version,
        next_counter: Counter,
        secret: ResumeSecret,
        /// Most contributions (or votes) a second the relay takes from this peer; more are
        /// rejected, so a peer paces itself below it. 0: no limit.
        rate_limit: u32,
    },
    /// Gradient estimates along consecutive directions of this peer, all computed at one
    /// version: the first direction's counter and that version (low 16 bits of each), then a
    /// byte each, `bytes[i]` for counter + i (1 to [`MAX_RUN`] of them). One estimate has a
    /// 6-byte form of its own; a run is how a step's lanes, or steps computed back to back,
    /// travel as one message.
    Contribute {
        counter: Serial,
        base_version: Serial,
        bytes: Vec<u8>,
    },
    /// The committee round `counter` this peer voted on is durable at log position `version`.
    /// A contribution gets no such answer: its entry in the log (this peer's id and counter in a
    /// `LogBatch`, which only ever carries durable entries) is its acceptance, so a peer reads
    /// one message per batch rather than one per contribution.
    Accepted { counter: Counter, version: Version },
    /// The contribution `counter` was not logged: a contribution named by the low 16 bits it
    /// was sent with (as [`crate::serial`] carries it), a committee round in full.
    Rejected {
        counter: Counter,
        reason: RejectReason,
        detail: String,
    },
    /// Consecutive log entries starting at position `first_version`, packed by a
    /// [`crate::LogCursor`].
    LogBatch {
        first_version: Version,
        entries: Vec<PackedEntry>,
    },
    /// Each peer's last counter in `log[0..version)`: what a joiner needs to resolve the implied
    /// counters of the batches that follow.
    CounterTable {
        version: Version,
        entries: Vec<(PeerId, Counter)>,
    },
    /// A peer's weight hash after applying `log[0..version)`.
    HashReport { version: Version, hash: WeightHash },
    /// A peer's local training loss at `version` (a scalar; no data).
    LossReport { version: Version, loss: f32 },
    /// The relay found this peer diverged: reload the snapshot and replay from there.
    Resync { version: Version, reason: String },
    /// A fatal problem with the connection or the job.
    Error { code: u16, message: String },
    /// In a committee job: evaluate the shared direction of this round (named by
    /// [`PeerId::COMMITTEE`] and the round) and send a `Vote`.
    Assign { round: Counter },
    /// A committee member's byte for the shared direction of `round`, computed at
    /// `base_version` (low 16 bits). The relay logs the median of a round's votes, once; each
    /// voter then hears `Accepted` (or `Rejected`) with the round as the counter.
    Vote {
        round: Counter,
        base_version: Serial,
        byte: u8,
    },
}

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const CONTRIBUTE: u8 = 0x03;
    pub const ACCEPTED: u8 = 0x04;
    pub const REJECTED: u8 = 0x05;
    pub const LOG_BATCH: u8 = 0x06;
    pub const HASH_REPORT: u8 = 0x07;
    pub const LOSS_REPORT: u8 = 0x08;
    pub const RESYNC: u8 = 0x09;
    pub const ERROR: u8 = 0x0a;
    pub const COUNTER_TABLE: u8 = 0x0b;
    pub const ASSIGN: u8 = 0x0c;
    pub const VOTE: u8 = 0x0d;
    pub const CONTRIBUTE_RUN: u8 = 0x0e;
}

impl Message {
    /// The message's name, for logs and error reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Contribute { .. } => "Contribute",
            Message::Accepted { .. } => "Accepted",
            Message::Rejected { .. } => "Rejected",
            Message::LogBatch { .. } => "LogBatch",
            Message::CounterTable { .. } => "CounterTable",
            Message::HashReport { .. } => "HashReport",
            Message::LossReport { .. } => "LossReport",
            Message::Resync { .. } => "Resync",
            Message::Error { .. } => "Error",
            Message::Assign { .. } => "Assign",
            Message::Vote { .. } => "Vote",
        }
    }

    /// Encodes into a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello {
                protocol,
                job,
                resume,
                from,
                token,
            } => {
                out.push(tag::HELLO);
                out.extend_from_slice(&protocol.to_le_bytes());
                varint::put(out, job.0);
                match resume {
                    Some(Resume { peer, secret }) => {
                        out.push(1);
                        varint::put(out, u64::from(peer.0));
                        out.extend_from_slice(&secret.0);
                    }
                    None => out.push(0),
                }
                varint::put(out, from.0);
                put_str(out, token);
            }
            Message::Welcome {
                peer,
                job,
                version,
                next_counter,
                secret,
                rate_limit,
            } => {
                out.push(tag::WELCOME);
                varint::put(out, u64::from(peer.0));
                varint::put(out, job.0);
                varint::put(out, version.0);
                varint::put(out, next_counter.0);
                out.extend_from_slice(&secret.0);
                varint::put(out, u64::from(*rate_limit));
            }
            Message::Contribute {
                counter,
                base_version,
                bytes,
            } => {
                let run = bytes.len() != 1;
                out.push(if run {
                    tag::CONTRIBUTE_RUN
                } else {
                    tag::CONTRIBUTE
                });
                out.extend_from_slice(&counter.0.to_le_bytes());
                out.extend_from_slice(&base_version.0.to_le_bytes());
                if run {
                    varint::put(out, bytes.len() as u64);
                }
                out.extend_from_slice(bytes);
            }
            Message::Accepted { counter, version } => {
                out.push(tag::ACCEPTED);
                varint::put(out, counter.0);
                varint::put(out, version.0);
            }
            Message::Rejected {
                counter,
                reason,
                detail,
            } => {
                out.push(tag::REJECTED);
                varint::put(out, counter.0);
                out.push(*reason as u8);
                put_str(out, detail);
            }
            Message::LogBatch {
                first_version,
                entries,
            } => {
                out.push(tag::LOG_BATCH);
                varint::put(out, first_version.0);
                varint::put(out, entries.len() as u64);
                for e in entries {
                    let explicit = u64::from(e.counter.is_some());
                    varint::put(out, (u64::from(e.peer.0) << 1) | explicit);
                    if let Some(c) = e.counter {
                        varint::put(out, c.0);
                    }
                    out.push(e.byte);
                }
            }
            Message::CounterTable { version, entries } => {
                out.push(tag::COUNTER_TABLE);
                varint::put(out, version.0);
                varint::put(out, entries.len() as u64);
                for (peer, counter) in entries {
                    varint::put(out, u64::from(peer.0));
                    varint::put(out, counter.0);
                }
            }
            Message::HashReport { version, hash } => {
                out.push(tag::HASH_REPORT);
                varint::put(out, version.0);
                out.extend_from_slice(&hash.0);
            }
            Message::LossReport { version, loss } => {
                out.push(tag::LOSS_REPORT);
                varint::put(out, version.0);
                out.extend_from_slice(&loss.to_le_bytes());
            }
            Message::Resync { version, reason } => {
                out.push(tag::RESYNC);
                varint::put(out, version.0);
                put_str(out, reason);
            }
            Message::Error { code, message } => {
                out.push(tag::ERROR);
                varint::put(out, u64::from(*code));
                put_str(out, message);
            }
            Message::Assign { round } => {
                out.push(tag::ASSIGN);
                varint::put(out, round.0);
            }
            Message::Vote {
                round,
                base_version,
                byte,
            } => {
                out.push(tag::VOTE);
                varint::put(out, round.0);
                out.extend_from_slice(&base_version.0.to_le_bytes());
                out.push(*byte);
            }
        }
    }

    /// Decodes exactly one message from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&tag, mut r) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let r = &mut r;
        let msg = match tag {
            tag::HELLO => {
                let protocol = u16::from_le_bytes(take::<2>(r, "protocol")?);
                let job = JobId(varint::get(r, "job")?);
                let resume = match take::<1>(r, "resume")?[0] {
                    0 => None,
                    1 => Some(Resume {
                        peer: get_peer(r)?,
                        secret: ResumeSecret(take::<16>(r, "secret")?),
                    }),
                    other => {
                        return Err(DecodeError::OutOfRange {
                            field: "resume",
                            value: u64::from(other),
                        });
                    }
                };
                let from = Version(varint::get(r, "from")?);
                let token = get_str(r, "token")?;
                Message::Hello {
                    protocol,
                    job,
                    resume,
                    from,
                    token,
                }
            }
            tag::WELCOME => Message::Welcome {
                peer: get_peer(r)?,
                job: JobId(varint::get(r, "job")?),
                version: Version(varint::get(r, "version")?),
                next_counter: Counter(varint::get(r, "next_counter")?),
                secret: ResumeSecret(take::<16>(r, "secret")?),
                rate_limit: get_u32(r, "rate_limit")?,
            },
            tag::CONTRIBUTE => Message::Contribute {
                counter: Serial(u16::from_le_bytes(take::<2>(r, "counter")?)),
                base_version: Serial(u16::from_le_bytes(take::<2>(r, "base_version")?)),
                bytes: vec![take::<1>(r, "byte")?[0]],
            },
            tag::CONTRIBUTE_RUN => {
                let counter = Serial(u16::from_le_bytes(take::<2>(r, "counter")?));
                let base_version = Serial(u16::from_le_bytes(take::<2>(r, "base_version")?));
                let n = get_count(r, MAX_RUN)?;
                // One estimate has its own form: a run is two or more.
                if n < 2 {
                    return Err(DecodeError::OutOfRange {
                        field: "run",
                        value: n as u64,
                    });
                }
                if r.len() < n {
                    return Err(DecodeError::Truncated("run"));
                }
                let (bytes, rest) = r.split_at(n);
                *r = rest;
                Message::Contribute {
                    counter,
                    base_version,
                    bytes: bytes.to_vec(),
                }
            }
            tag::ACCEPTED => Message::Accepted {
                counter: Counter(varint::get(r, "counter")?),
                version: Version(varint::get(r, "version")?),
            },
            tag::REJECTED => Message::Rejected {
                counter: Counter(varint::get(r, "counter")?),
                reason: RejectReason::from_code(take::<1>(r, "reason")?[0])?,
                detail: get_str(r, "detail")?,
            },
            tag::LOG_BATCH => {
                let first_version = Version(varint::get(r, "first_version")?);
                let n = get_count(r, MAX_BATCH)?;
                // Each entry is at least 2 bytes: do not trust `n` for the allocation.
                let mut entries = Vec::with_capacity(n.min(r.len() / 2));
                for _ in 0..n {
                    let field = varint::get(r, "peer")?;
                    let peer = u32::try_from(field >> 1).map(PeerId).map_err(|_| {
                        DecodeError::OutOfRange {
                            field: "peer",
                            value: field >> 1,
                        }
                    })?;
                    let counter = if field & 1 == 1 {
                        Some(Counter(varint::get(r, "counter")?))
                    } else {
                        None
                    };
                    entries.push(PackedEntry {
                        peer,
                        counter,
                        byte: take::<1>(r, "byte")?[0],
                    });
                }
                Message::LogBatch {
                    first_version,
                    entries,
                }
            }
            tag::COUNTER_TABLE => {
                let version = Version(varint::get(r, "version")?);
                let n = get_count(r, MAX_TABLE)?;
                let mut entries = Vec::with_capacity(n.min(r.len() / 2));
                for _ in 0..n {
                    entries.push((get_peer(r)?, Counter(varint::get(r, "counter")?)));
                }
                Message::CounterTable { version, entries }
            }
            tag::HASH_REPORT => Message::HashReport {
                version: Version(varint::get(r, "version")?),
                hash: WeightHash(take::<32>(r, "hash")?),
            },
            tag::LOSS_REPORT => Message::LossReport {
                version: Version(varint::get(r, "version")?),
                loss: f32::from_le_bytes(take::<4>(r, "loss")?),
            },
            tag::RESYNC => Message::Resync {
                version: Version(varint::get(r, "version")?),
                reason: get_str(r, "reason")?,
            },
            tag::ERROR => {
                let code = varint::get(r, "code")?;
                let code = u16::try_from(code).map_err(|_| DecodeError::OutOfRange {
                    field: "code",
                    value: code,
                })?;
                Message::Error {
                    code,
                    message: get_str(r, "message")?,
                }
            }
            tag::ASSIGN => Message::Assign {
                round: Counter(varint::get(r, "round")?),
            },
            tag::VOTE => Message::Vote {
                round: Counter(varint::get(r, "round")?),
                base_version: Serial(u16::from_le_bytes(take::<2>(r, "base_version")?)),
                byte: take::<1>(r, "byte")?[0],
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if !r.is_empty() {
            return Err(DecodeError::TrailingBytes(r.len()));
        }
        Ok(msg)
    }
}

fn take<const N: usize>(r: &mut &[u8], field: &'static str) -> Result<[u8; N], DecodeError> {
    if r.len() < N {
        return Err(DecodeError::Truncated(field));
    }
    let (head, rest) = r.split_at(N);
    *r = rest;
    Ok(head.try_into().expect("split_at gave N bytes"))
}

fn get_peer(r: &mut &[u8]) -> Result<PeerId, DecodeError> {
    get_u32(r, "peer").map(PeerId)
}

fn get_u32(r: &mut &[u8], field: &'static str) -> Result<u32, DecodeError> {
    let v = varint::get(r, field)?;
    u32::try_from(v).map_err(|_| DecodeError::OutOfRange { field, value: v })
}

fn get_count(r: &mut &[u8], limit: u64) -> Result<usize, DecodeError> {
    let n = varint::get(r, "entries")?;
    if n > limit {
        return Err(DecodeError::TooLong {
            field: "entries",
            len: n,
            limit,
        });
    }
    Ok(n as usize)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    varint::put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut &[u8], field: &'static str) -> Result<String, DecodeError> {
    let len = varint::get(r, field)?;
    if len > MAX_STRING {
        return Err(DecodeError::TooLong {
            field,
            len,
            limit: MAX_STRING,
        });
    }
    let len = len as usize;
    if r.len() < len {
        return Err(DecodeError::Truncated(field));
    }
    let (head, rest) = r.split_at(len);
    *r = rest;
    String::from_utf8(head.to_vec()).map_err(|_| DecodeError::InvalidUtf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_string() -> impl Strategy<Value = String> {
        proptest::string::string_regex(".{0,40}").unwrap()
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let reason = prop_oneof![
            Just(RejectReason::Stale),
            Just(RejectReason::CounterNotIncreasing),
            Just(RejectReason::RateLimited),
            Just(RejectReason::Paused),
            Just(RejectReason::FromTheFuture),
            Just(RejectReason::Quarantined),
            Just(RejectReason::RoundClosed),
            Just(RejectReason::NotAssigned),
        ];
        let entry =
            (any::<u32>(), any::<Option<u64>>(), any::<u8>()).prop_map(|(p, c, b)| PackedEntry {
                peer: PeerId(p),
                counter: c.map(Counter),
                byte: b,
            });
        prop_oneof![
            (
                any::<u16>(),
                any::<u64>(),
                any::<Option<(u32, [u8; 16])>>(),
                any::<u64>(),
                any_string()
            )
                .prop_map(|(protocol, job, resume, from, token)| Message::Hello {
                    protocol,
                    job: JobId(job),
                    resume: resume.map(|(p, s)| Resume {
                        peer: PeerId(p),
                        secret: ResumeSecret(s)
                    }),
                    from: Version(from),
                    token
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 16]>(),
                any::<u32>()
            )
                .prop_map(|(p, j, v, c, s, rate_limit)| Message::Welcome {
                    peer: PeerId(p),
                    job: JobId(j),
                    version: Version(v),
                    next_counter: Counter(c),
                    secret: ResumeSecret(s),
                    rate_limit,
                }),
            (
                any::<u16>(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 1..300)
            )
                .prop_map(|(c, v, bytes)| Message::Contribute {
                    counter: Serial(c),
                    base_version: Serial(v),
                    bytes
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(c, v)| Message::Accepted {
                counter: Counter(c),
                version: Version(v)
            }),
            (any::<u64>(), reason, any_string()).prop_map(|(c, reason, detail)| {
                Message::Rejected {
                    counter: Counter(c),
                    reason,
                    detail,
                }
            }),
            (any::<u64>(), proptest::collection::vec(entry, 0..20)).prop_map(|(v, entries)| {
                Message::LogBatch {
                    first_version: Version(v),
                    entries,
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u32>(), any::<u64>()), 0..20)
            )
                .prop_map(|(v, table)| Message::CounterTable {
                    version: Version(v),
                    entries: table
                        .into_iter()
                        .map(|(p, c)| (PeerId(p), Counter(c)))
                        .collect(),
                }),
            (any::<u64>(), any::<[u8; 32]>()).prop_map(|(v, h)| Message::HashReport {
                version: Version(v),
                hash: WeightHash(h)
            }),
            (any::<u64>(), -1e6f32..1e6).prop_map(|(v, loss)| Message::LossReport {
                version: Version(v),
                loss
            }),
            (any::<u64>(), any_string()).prop_map(|(v, reason)| Message::Resync {
                version: Version(v),
                reason
            }),
            (any::<u16>(), any_string())
                .prop_map(|(code, message)| Message::Error { code, message }),
            any::<u64>().prop_map(|r| Message::Assign { round: Counter(r) }),
            (any::<u64>(), any::<u16>(), any::<u8>()).prop_map(|(r, v, b)| Message::Vote {
                round: Counter(r),
                base_version: Serial(v),
                byte: b
            }),
        ]
    }

    proptest! {
        #[test]
        fn codec_round_trips(msg in any_message()) {
            let bytes = msg.encode();
            prop_assert_eq!(Message::decode(&bytes), Ok(msg));
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_messages_never_panics(msg in any_message(), flip in any::<(usize, u8)>(), cut in any::<usize>()) {
            let mut bytes = msg.encode();
            let i = flip.0 % bytes.len();
            bytes[i] ^= flip.1;
            let _ = Message::decode(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn truncated_messages_are_errors(msg in any_message()) {
            let bytes = msg.encode();
            for n in 0..bytes.len() {
                prop_assert!(Message::decode(&bytes[..n]).is_err());
            }
        }
    }

    #[test]
    fn documented_sizes_hold() {
        let contribute = Message::Contribute {
            counter: Serial::of(1 << 40),
            base_version: Serial::of(100_000),
            bytes: vec![0x81],
        };
        assert_eq!(contribute.encode().len(), 6);
        assert_eq!(crate::framing::client_frame_len(6), 12);
        // A run of 64 (one step's lanes): 1 + 2 + 2 + 1 + 64.
        let run = Message::Contribute {
            counter: Serial::of(7),
            base_version: Serial::of(9),
            bytes: vec![3; 64],
        };
        assert_eq!(run.encode().len(), 70);
        let batch = Message::LogBatch {
            first_version: Version(1000),
            entries: vec![
                PackedEntry {
                    peer: PeerId(3),
                    counter: Some(Counter(7)),
                    byte: 1
                };
                64
            ],
        };
        // 1 tag + 2 (version 1000) + 1 (n = 64) + 64 × 3
        assert_eq!(batch.encode().len(), 1 + 2 + 1 + 64 * 3);
    }

    #[test]
    fn a_run_is_two_to_max_run_estimates_and_one_has_its_own_form() {
        let run = |n: u64| {
            let mut bytes = vec![tag::CONTRIBUTE_RUN, 1, 0, 2, 0];
            varint::put(&mut bytes, n);
            bytes.extend(std::iter::repeat_n(5, n as usize));
            bytes
        };
        assert!(Message::decode(&run(2)).is_ok());
        assert!(Message::decode(&run(MAX_RUN)).is_ok());
        assert!(matches!(
            Message::decode(&run(1)),
            Err(DecodeError::OutOfRange { field: "run", .. })
        ));
        assert!(Message::decode(&run(0)).is_err());
        assert!(matches!(
            Message::decode(&run(MAX_RUN + 1)),
            Err(DecodeError::TooLong { .. })
        ));
        let one = Message::Contribute {
            counter: Serial(1),
            base_version: Serial(2),
            bytes: vec![5],
        };
        assert_eq!(one.encode()[0], tag::CONTRIBUTE);
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_are_errors() {
        let mut bytes = Message::Accepted {
            counter: Counter(1),
            version: Version(2),
        }
        .encode();
        bytes.push(0);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(Message::decode(&[0xee]), Err(DecodeError::UnknownTag(0xee)));
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn a_counter_table_of_more_peers_than_a_batch_decodes() {
        let table = Message::CounterTable {
            version: Version(1 << 30),
            entries: (0..200_000)
                .map(|p| (PeerId(p), Counter(u64::from(p) * 3)))
                .collect(),
        };
        assert_eq!(Message::decode(&table.encode()), Ok(table));
    }

    #[test]
    fn huge_declared_lengths_are_refused_without_allocating() {
        let mut bytes = vec![tag::LOG_BATCH, 0];
        varint::put(&mut bytes, u64::MAX);
        assert!(matches!(
            Message::decode(&bytes),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
