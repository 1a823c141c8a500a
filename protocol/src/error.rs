use thiserror::Error;

/// Why a byte string is not a valid message. Decoding never panics; it returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message is empty")]
    Empty,
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("message ends inside field `{0}`")]
    Truncated(&'static str),
    #[error("varint in field `{0}` is longer than 10 bytes or overflows 64 bits")]
    VarintOverflow(&'static str),
    #[error("field `{field}` holds {value}, which does not fit")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("field `{field}` declares {len} items, more than the limit of {limit}")]
    TooLong {
        field: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
}
