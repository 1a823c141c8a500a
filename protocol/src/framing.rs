//! WebSocket framing overhead (RFC 6455 §5.2), so byte counts include what the socket sends.
//!
//! A frame has a 2-byte header for payloads up to 125 bytes, 4 up to 65 535, 10 beyond; frames
//! from a client also carry a 4-byte masking key.

/// Header bytes of an unmasked (server → client) frame with `payload` bytes.
pub fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// Bytes on the wire for a server → client frame.
pub fn server_frame_len(payload: usize) -> usize {
    header_len(payload) + payload
}

/// Bytes on the wire for a client → server frame (masked).
pub fn client_frame_len(payload: usize) -> usize {
    header_len(payload) + 4 + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_follow_rfc_6455() {
        assert_eq!(client_frame_len(4), 10);
        assert_eq!(server_frame_len(125), 127);
        assert_eq!(server_frame_len(126), 130);
        assert_eq!(server_frame_len(70_000), 70_010);
    }
}
