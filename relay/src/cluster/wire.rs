//! What edges and the sequencer say to each other over NATS: an edge's tick of records (on the
//! `RAW` stream), the sequencer's answers to one edge, and its announcement to all.
//!
//! Hand-encoded with the protocol's varints, like the log's messages: a handful of small
//! records, read by one program, where a general serialisation format would add a dependency
//! and bytes.

use crate::sequencer::{Joined, Proposed, Refusal};
use bytes::Bytes;
use protocol::{Counter, PeerId, Resume, ResumeSecret, Serial, Version, varint};

/// The format written; a reader refuses one it does not know.
const FORMAT: u8 = 1;

/// What a socket on an edge asks of the sequencer (a `Command` without its channels; the
/// edge keeps those and matches the answers to them by `conn` or `request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Join {
        conn: u64,
        resume: Option<Resume>,
        from: Version,
    },
    Propose {
        peer: PeerId,
        proposed: Proposed,
        base: Serial,
        floor: Version,
        byte: u8,
    },
    Leave {
        peer: PeerId,
        socket: u64,
    },
    Pause {
        request: u64,
        paused: bool,
    },
    Drop {
        request: u64,
        peer: PeerId,
    },
    Release {
        request: u64,
        peer: PeerId,
    },
}

/// One edge's records of one tick, for the sequencer of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub epoch: u64,
    pub edge: u64,
    pub records: Vec<Record>,
}

/// What the sequencer says to one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Joined {
        conn: u64,
        joined: Result<Joined, Refusal>,
    },
    /// Frames for a connection, to go out after the log up to `after` has.
    Outgoing {
        conn: u64,
        after: Version,
        frames: Vec<Bytes>,
    },
    Kick {
        conn: u64,
        refusal: Refusal,
    },
    Paused {
        request: u64,
        written: Result<(), String>,
    },
    Dropped {
        request: u64,
        dropped: bool,
    },
    Released {
        request: u64,
        released: Result<bool, String>,
    },
}

// A secret is compared in constant time where it is checked; here, only in tests.
impl PartialEq for Joined {
    fn eq(&self, other: &Self) -> bool {
        self.peer == other.peer
            && self.next_counter == other.next_counter
            && self.live_from == other.live_from
            && self.secret.0 == other.secret.0
            && self.resumed == other.resumed
            && self.socket == other.socket
            && self.quarantined == other.quarantined
    }
}
impl Eq for Joined {}

/// The sequencer of `epoch` is in charge, and what it has decided for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub epoch: u64,
    pub paused: bool,
    pub peers: u64,
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a cluster message does not decode: {0}")]
pub struct WireError(pub String);

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        Writer(vec![FORMAT])
    }
    fn u(&mut self, value: u64) -> &mut Self {
        varint::put(&mut self.0, value);
        self
    }
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }
    fn refusal(&mut self, refusal: &Refusal) -> &mut Self {
        self.u(u64::from(refusal.code))
            .bytes(refusal.reason.as_bytes())
    }
    fn done(self) -> Bytes {
        self.0.into()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(payload: &'a [u8]) -> Result<Self, WireError> {
        match payload.split_first() {
            Some((&FORMAT, rest)) => Ok(Reader(rest)),
            Some((format, _)) => Err(WireError(format!("format {format} is not {FORMAT}"))),
            None => Err(WireError("empty".into())),
        }
    }
    fn u(&mut self, field: &'static str) -> Result<u64, WireError> {
        varint::get(&mut self.0, field).map_err(|e| WireError(e.to_string()))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        u32::try_from(self.u(field)?).map_err(|_| WireError(format!("{field} out of range")))
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        u16::try_from(self.u(field)?).map_err(|_| WireError(format!("{field} out of range")))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, WireError> {
        Ok(self.u(field)? != 0)
    }
    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.u(field)? as usize;
        if n > self.0.len() {
            return Err(WireError(format!("{field} is cut short")));
        }
        let (bytes, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(bytes)
    }
    fn text(&mut self, field: &'static str) -> Result<String, WireError> {
        String::from_utf8(self.bytes(field)?.to_vec())
            .map_err(|_| WireError(format!("{field} is not UTF-8")))
    }
    fn refusal(&mut self) -> Result<Refusal, WireError> {
        Ok(Refusal::new(self.u16("code")?, self.text("reason")?))
    }
    fn more(&self) -> bool {
        !self.0.is_empty()
    }
}

impl Tick {
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        w.u(self.epoch).u(self.edge);
        for record in &self.records {
            match record {
                Record::Join { conn, resume, from } => {
                    w.u(0).u(*conn).u(from.0);
                    match resume {
                        Some(r) => w.u(1).u(u64::from(r.peer.0)).bytes(&r.secret.0),
                        None => w.u(0),
                    };
                }
                Record::Propose {
                    peer,
                    proposed,
                    base,
                    floor,
                    byte,
                } => {
                    w.u(1).u(u64::from(peer.0));
                    match proposed {
                        Proposed::Contribution(serial) => w.u(0).u(u64::from(serial.0)),
                        Proposed::Vote(round) => w.u(1).u(round.0),
                    };
                    w.u(u64::from(base.0)).u(floor.0).u(u64::from(*byte));
                }
                Record::Leave { peer, socket } => {
                    w.u(2).u(u64::from(peer.0)).u(*socket);
                }
                Record::Pause { request, paused } => {
                    w.u(3).u(*request).u(u64::from(*paused));
                }
                Record::Drop { request, peer } => {
                    w.u(4).u(*request).u(u64::from(peer.0));
                }
                Record::Release { request, peer } => {
                    w.u(5).u(*request).u(u64::from(peer.0));
                }
            }
        }
        w.done()
    }

    pub fn decode(payload: &[u8]) -> Result<Tick, WireError> {
        let mut r = Reader::new(payload)?;
        let epoch = r.u("epoch")?;
        let edge = r.u("edge")?;
        let mut records = Vec::new();
        while r.more() {
            records.push(match r.u("record")? {
                0 => {
                    let conn = r.u("conn")?;
                    let from = Version(r.u("from")?);
                    let resume = match r.u("resume")? {
                        0 => None,
                        _ => {
                            let peer = PeerId(r.u32("peer")?);
                            let secret = <[u8; 16]>::try_from(r.bytes("secret")?)
                                .map_err(|_| WireError("a secret is not 16 bytes".into()))?;
                            Some(Resume {
                                peer,
                                secret: ResumeSecret(secret),
                            })
                        }
                    };
                    Record::Join { conn, resume, from }
                }
                1 => Record::Propose {
                    peer: PeerId(r.u32("peer")?),
                    proposed: match r.u("proposed")? {
                        0 => Proposed::Contribution(Serial(r.u16("serial")?)),
                        _ => Proposed::Vote(Counter(r.u("round")?)),
                    },
                    base: Serial(r.u16("base")?),
                    floor: Version(r.u("floor")?),
                    byte: u8::try_from(r.u("byte")?)
                        .map_err(|_| WireError("a byte out of range".into()))?,
                },
                2 => Record::Leave {
                    peer: PeerId(r.u32("peer")?),
                    socket: r.u("socket")?,
                },
                3 => Record::Pause {
                    request: r.u("request")?,
                    paused: r.flag("paused")?,
                },
                4 => Record::Drop {
                    request: r.u("request")?,
                    peer: PeerId(r.u32("peer")?),
                },
                5 => Record::Release {
                    request: r.u("request")?,
                    peer: PeerId(r.u32("peer")?),
                },
                other => return Err(WireError(format!("unknown record {other}"))),
            });
        }
        Ok(Tick {
            epoch,
            edge,
            records,
        })
    }
}

impl Answer {
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        match self {
            Answer::Joined {
                conn,
                joined: Ok(j),
            } => {
                w.u(0).u(*conn).u(u64::from(j.peer.0)).u(j.next_counter.0);
                w.u(j.live_from.0)
                    .bytes(&j.secret.0)
                    .u(u64::from(j.resumed));
                w.u(j.socket).u(u64::from(j.quarantined));
            }
            Answer::Joined {
                conn,
                joined: Err(refusal),
            } => {
                w.u(1).u(*conn).refusal(refusal);
            }
            Answer::Outgoing {
                conn,
                after,
                frames,
            } => {
                w.u(2).u(*conn).u(after.0).u(frames.len() as u64);
                for frame in frames {
                    w.bytes(frame);
                }
            }
            Answer::Kick { conn, refusal } => {
                w.u(3).u(*conn).refusal(refusal);
            }
            Answer::Paused { request, written } => {
                w.u(4).u(*request);
                match written {
                    Ok(()) => w.u(0),
                    Err(e) => w.u(1).bytes(e.as_bytes()),
                };
            }
            Answer::Dropped { request, dropped } => {
                w.u(5).u(*request).u(u64::from(*dropped));
            }
            Answer::Released { request, released } => {
                w.u(6).u(*request);
                match released {
                    Ok(released) => w.u(0).u(u64::from(*released)),
                    Err(e) => w.u(1).bytes(e.as_bytes()),
                };
            }
        }
        w.done()
    }

    pub fn decode(payload: &[u8]) -> Result<Answer, WireError> {
        let mut r = Reader::new(payload)?;
        Ok(match r.u("answer")? {
            0 => Answer::Joined {
                conn: r.u("conn")?,
                joined: Ok(Joined {
                    peer: PeerId(r.u32("peer")?),
                    next_counter: Counter(r.u("next counter")?),
                    live_from: Version(r.u("live from")?),
                    secret: ResumeSecret(
                        <[u8; 16]>::try_from(r.bytes("secret")?)
                            .map_err(|_| WireError("a secret is not 16 bytes".into()))?,
                    ),
                    resumed: r.flag("resumed")?,
                    socket: r.u("socket")?,
                    quarantined: r.flag("quarantined")?,
                }),
            },
            1 => Answer::Joined {
                conn: r.u("conn")?,
                joined: Err(r.refusal()?),
            },
            2 => {
                let conn = r.u("conn")?;
                let after = Version(r.u("after")?);
                let n = r.u("frames")?;
                let mut frames = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    frames.push(Bytes::copy_from_slice(r.bytes("frame")?));
                }
                Answer::Outgoing {
                    conn,
                    after,
                    frames,
                }
            }
            3 => Answer::Kick {
                conn: r.u("conn")?,
                refusal: r.refusal()?,
            },
            4 => Answer::Paused {
                request: r.u("request")?,
                written: match r.u("written")? {
                    0 => Ok(()),
                    _ => Err(r.text("error")?),
                },
            },
            5 => Answer::Dropped {
                request: r.u("request")?,
                dropped: r.flag("dropped")?,
            },
            6 => Answer::Released {
                request: r.u("request")?,
                released: match r.u("released")? {
                    0 => Ok(r.flag("released")?),
                    _ => Err(r.text("error")?),
                },
            },
            other => return Err(WireError(format!("unknown answer {other}"))),
        })
    }
}

impl Announcement {
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        w.u(self.epoch).u(u64::from(self.paused)).u(self.peers);
        w.done()
    }

    pub fn decode(payload: &[u8]) -> Result<Announcement, WireError> {
        let mut r = Reader::new(payload)?;
        Ok(Announcement {
            epoch: r.u("epoch")?,
            paused: r.flag("paused")?,
            peers: r.u("peers")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_and_answer_decodes_to_what_was_encoded() {
        let tick = Tick {
            epoch: 9,
            edge: 1 << 40,
            records: vec![
                Record::Join {
                    conn: 3,
                    resume: Some(Resume {
                        peer: PeerId(4),
                        secret: ResumeSecret([7; 16]),
                    }),
                    from: Version(100),
                },
                Record::Join {
                    conn: 4,
                    resume: None,
                    from: Version(0),
                },
                Record::Propose {
                    peer: PeerId(4),
                    proposed: Proposed::Contribution(Serial(65_535)),
                    base: Serial(12),
                    floor: Version(99),
                    byte: 255,
                },
                Record::Propose {
                    peer: PeerId(5),
                    proposed: Proposed::Vote(Counter(77)),
                    base: Serial(0),
                    floor: Version(0),
                    byte: 0,
                },
                Record::Leave {
                    peer: PeerId(4),
                    socket: 2,
                },
                Record::Pause {
                    request: 1,
                    paused: true,
                },
                Record::Drop {
                    request: 2,
                    peer: PeerId(1),
                },
                Record::Release {
                    request: 3,
                    peer: PeerId(2),
                },
            ],
        };
        assert_eq!(Tick::decode(&tick.encode()), Ok(tick.clone()));
        let encoded = tick.encode();
        assert!(Tick::decode(&encoded[..encoded.len() - 1]).is_err());

        let answers = [
            Answer::Joined {
                conn: 1,
                joined: Ok(Joined {
                    peer: PeerId(3),
                    next_counter: Counter(10),
                    live_from: Version(500),
                    secret: ResumeSecret([1; 16]),
                    resumed: true,
                    socket: 8,
                    quarantined: false,
                }),
            },
            Answer::Joined {
                conn: 2,
                joined: Err(Refusal::new(4009, "full")),
            },
            Answer::Outgoing {
                conn: 3,
                after: Version(7),
                frames: vec![Bytes::from_static(b"ab"), Bytes::new()],
            },
            Answer::Kick {
                conn: 4,
                refusal: Refusal::new(4013, "dropped"),
            },
            Answer::Paused {
                request: 5,
                written: Err("disk full".into()),
            },
            Answer::Dropped {
                request: 6,
                dropped: true,
            },
            Answer::Released {
                request: 7,
                released: Ok(false),
            },
        ];
        for answer in answers {
            assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
        }
        let announcement = Announcement {
            epoch: 3,
            paused: true,
            peers: 12,
        };
        assert_eq!(
            Announcement::decode(&announcement.encode()),
            Ok(announcement)
        );
        assert!(Announcement::decode(&[2, 0, 0, 0]).is_err());
    }
}
