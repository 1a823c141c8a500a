//! What the fuzz targets check, as plain functions (each target's `fuzz_target!` calls one).

use protocol::{LogCursor, Message};

/// Any bytes: decoding never panics, and whatever decodes re-encodes to bytes that decode to
/// the same message (compared by encoding, so a NaN loss compares equal to itself).
pub fn message_round_trips(bytes: &[u8]) {
    let Ok(msg) = Message::decode(bytes) else {
        return;
    };
    let encoded = msg.encode();
    let again = Message::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(again.encode(), encoded, "{msg:?}");
}

/// Any bytes as a stream of messages (each prefixed by a one-byte length): counter tables and
/// log batches drive a cursor as a peer's session does. Nothing panics, and every batch the
/// cursor accepts packs back, from the cursor it started at, into the same entries.
pub fn log_stream_is_consistent(mut bytes: &[u8]) {
    let mut cursor: Option<LogCursor> = None;
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len).min(rest.len());
        let (frame, rest) = rest.split_at(len);
        bytes = rest;
        match Message::decode(frame) {
            Ok(Message::CounterTable { version, entries }) => {
                cursor = Some(LogCursor::from_table(version, &entries));
            }
            Ok(Message::LogBatch {
                first_version,
                entries,
            }) => {
                let Some(c) = cursor.as_mut() else { continue };
                let before = c.clone();
                let Ok(unpacked) = c.unpack(first_version, &entries) else {
                    continue;
                };
                assert_eq!(unpacked.len(), entries.len());
                // Packed again from the same start, the entries unpack to themselves, and both
                // cursors end in the same place.
                let mut packer = before.clone();
                let Message::LogBatch {
                    entries: repacked, ..
                } = packer.pack(&unpacked)
                else {
                    unreachable!("pack makes a LogBatch")
                };
                let mut reader = before;
                let again = reader
                    .unpack(first_version, &repacked)
                    .expect("a packed batch unpacks");
                assert_eq!(again, unpacked);
                assert_eq!(reader, *c);
                assert_eq!(packer, *c);
            }
            _ => {}
        }
    }
}
