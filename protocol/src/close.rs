//! WebSocket close codes the relay uses, with the reason text in the close frame saying more.
//!
//! 1xxx codes are RFC 6455's where one fits; 4xxx are ours. A peer treats [`is_fatal`] codes as
//! "fix the configuration" and every other close as "reconnect with backoff".

/// The relay is shutting down (RFC 6455 "going away").
pub const GOING_AWAY: u16 = 1001;
/// A text frame: the protocol is binary only (RFC 6455 "unsupported data").
pub const NOT_BINARY: u16 = 1003;
/// A frame over the relay's size limit (RFC 6455 "message too big").
pub const TOO_BIG: u16 = 1009;
/// The first message was not a valid `Hello`, or spoke another protocol version.
pub const BAD_HELLO: u16 = 4000;
/// Missing or wrong join token.
pub const UNAUTHORIZED: u16 = 4001;
/// A message that is valid but not allowed at this point (a second `Hello`, a `Contribute`
/// before `Hello`, a relay-only message sent by a peer).
pub const UNEXPECTED: u16 = 4002;
/// The page's Origin is not on the relay's allow-list.
pub const FORBIDDEN_ORIGIN: u16 = 4003;
/// `Hello` named another job.
pub const WRONG_JOB: u16 = 4004;
/// A binary frame that does not decode as a message.
pub const MALFORMED: u16 = 4005;
/// The peer did not read its frames fast enough; its queue filled.
pub const SLOW_CONSUMER: u16 = 4008;
/// The relay has its maximum number of peers.
pub const FULL: u16 = 4009;
/// `Hello` asked to resume a peer id that is connected on another socket (an old connection
/// the relay has not yet seen die): retry later with the same id.
pub const PEER_UNAVAILABLE: u16 = 4010;
/// `Hello` asked for the log from a version the log has not reached.
pub const AHEAD_OF_LOG: u16 = 4011;
/// No `Hello` arrived in time.
pub const HELLO_TIMEOUT: u16 = 4012;
/// The relay's host dropped this peer (from the dashboard). Reconnecting would undo the host's
/// decision, so it is fatal.
pub const DROPPED: u16 = 4013;
/// A joined peer went quiet: it answered no ping, or sent nothing while the log moved on. A
/// peer that is following the log reports its hash every few hundred entries.
pub const IDLE: u16 = 4014;
/// `Hello` asked to resume a peer id the relay does not know (any more), or without that id's
/// resume secret: join afresh, without an id.
pub const UNKNOWN_PEER: u16 = 4015;
/// Too many connections or joins from this peer's network address: retry later.
pub const BUSY: u16 = 4016;

/// Whether retrying cannot help: the peer's configuration is wrong.
pub fn is_fatal(code: u16) -> bool {
    matches!(
        code,
        BAD_HELLO
            | UNAUTHORIZED
            | FORBIDDEN_ORIGIN
            | WRONG_JOB
            | MALFORMED
            | NOT_BINARY
            | TOO_BIG
            | DROPPED
    )
}
