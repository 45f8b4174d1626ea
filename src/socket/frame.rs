//! Server-to-client WebSocket frames, encoded once, header included.
//!
//! A frame the server sends is never masked (RFC 6455 section 5.1), so its bytes are the same for
//! every recipient: fan-out encodes a frame once and every socket writes the same bytes. Each
//! frame here is final (FIN set) and uncompressed; the length takes 1, 3 or 9 bytes (5.2).

use bytes::{BufMut, Bytes, BytesMut};

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping.
pub const PING: u8 = 0x9;
/// Opcode of a pong.
pub const PONG: u8 = 0xA;

/// Most payload bytes a control frame (close, ping, pong) may carry (5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Bytes of the header of a frame carrying `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// A final frame of `opcode` carrying `payload`, header included.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    encode(TEXT, text.as_bytes())
}

/// A binary frame carrying `bytes`.
pub fn binary(bytes: &[u8]) -> Bytes {
    encode(BINARY, bytes)
}

/// A ping carrying `payload` (at most [`MAX_CONTROL_PAYLOAD`] bytes; the rest is cut).
pub fn ping(payload: &[u8]) -> Bytes {
    encode(PING, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// A pong answering a ping that carried `payload` (cut like [`ping`]'s).
pub fn pong(payload: &[u8]) -> Bytes {
    encode(PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// A close frame with `code` and `reason`. The reason is cut, on a character boundary, to what
/// fits a control frame (123 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let room = MAX_CONTROL_PAYLOAD - 2;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(CLOSE, &payload)
}

/// Opcode of a continuation frame (a fragmented message's later frames).
pub const CONTINUATION: u8 = 0x0;

/// A frame's header (5.2), as it arrived: the first 2 to 14 bytes of any frame, the client's
/// (masked) or the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN: the last frame of its message.
    pub fin: bool,
    /// RSV1 to RSV3, in place (`0x70` of the first byte); no extension gives them a meaning.
    pub rsv: u8,
    /// The opcode (the low 4 bits of the first byte).
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length the frame announces.
    pub len: u64,
    /// Bytes the header takes.
    pub size: usize,
}

impl Header {
    /// Whether the opcode is a control frame's (close, ping, pong and the reserved `0xB`–`0xF`).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// The header at the start of `bytes`; `None` while `bytes` does not hold all of it.
pub fn header(bytes: &[u8]) -> Option<Header> {
    let (&first, rest) = bytes.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let (len, rest, len_bytes) = match second & 0x7F {
        126 => {
            let (len, rest) = rest.split_first_chunk::<2>()?;
            (u64::from(u16::from_be_bytes(*len)), rest, 2)
        }
        127 => {
            let (len, rest) = rest.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*len), rest, 8)
        }
        len => (u64::from(len), rest, 0),
    };
    let mask = if second & 0x80 != 0 {
        Some(*rest.first_chunk::<4>()?)
    } else {
        None
    };
    Some(Header {
        fin: first & 0x80 != 0,
        rsv: first & 0x70,
        opcode: first & 0x0F,
        mask,
        len,
        size: 2 + len_bytes + if mask.is_some() { 4 } else { 0 },
    })
}

/// The opcode and payload of a frame this module encoded; `None` for anything else (too
/// short, masked, not final, or a length that disagrees with the bytes).
pub fn parse(frame: &[u8]) -> Option<(u8, &[u8])> {
    let header = header(frame)?;
    if !header.fin || header.rsv != 0 || header.mask.is_some() {
        return None;
    }
    let payload = &frame[header.size..];
    (payload.len() as u64 == header.len).then_some((header.opcode, payload))
}

fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | (opcode & 0x0F));
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// What tungstenite (the reader every Rust client uses) makes of `bytes`: the header and the
    /// payload length it announces, and how many bytes the header took.
    fn tungstenite_reads(bytes: &[u8]) -> (FrameHeader, u64, usize) {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("a well-formed header")
            .expect("a whole header");
        (header, len, usize::try_from(cursor.position()).unwrap())
    }

    #[test]
    fn every_length_class_is_read_back_by_tungstenite() {
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 200_000] {
            let payload = vec![b'x'; len];
            let bytes = encode(TEXT, &payload);
            let (header, announced, header_bytes) = tungstenite_reads(&bytes);
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert!(header.mask.is_none(), "server frames are never masked");
            assert_eq!(announced, len as u64);
            assert_eq!(header_bytes, header_len(len));
            assert_eq!(&bytes[header_bytes..], &payload[..]);
            assert_eq!(parse(&bytes), Some((TEXT, &payload[..])));
        }
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let bytes = close(4000, &reason);
        let (opcode, payload) = parse(&bytes).unwrap();
        assert_eq!(opcode, CLOSE);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000);
        let kept = std::str::from_utf8(&payload[2..]).expect("whole characters");
        assert!(reason.starts_with(kept) && kept.len() == 122);
    }

    #[test]
    fn control_payloads_are_cut_to_125_bytes() {
        let (opcode, payload) = parse(&ping(&[7; 300]))
            .map(|(o, p)| (o, p.to_vec()))
            .unwrap();
        assert_eq!((opcode, payload.len()), (PING, 125));
        assert_eq!(parse(&pong(b"abc")), Some((PONG, &b"abc"[..])));
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(opcode in prop::sample::select(vec![TEXT, BINARY, PING, PONG, CLOSE]),
                                   payload in prop::collection::vec(any::<u8>(), 0..70_000)) {
            let bytes = encode(opcode, &payload);
            prop_assert_eq!(parse(&bytes), Some((opcode, &payload[..])));
            let (_, announced, header_bytes) = tungstenite_reads(&bytes);
            prop_assert_eq!(announced, payload.len() as u64);
            prop_assert_eq!(header_bytes + payload.len(), bytes.len());
        }

        /// Any bytes read as a header read as tungstenite reads them: the same fields, the same
        /// length and size, and neither reads a header from fewer bytes than the other.
        #[test]
        fn any_header_reads_as_tungstenite_reads_it(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            let mut cursor = std::io::Cursor::new(&bytes[..]);
            let theirs = match FrameHeader::parse(&mut cursor) {
                Ok(theirs) => theirs,
                Err(_) => {
                    // Tungstenite refuses a whole header with a reserved opcode.
                    let ours = header(&bytes).expect("a whole header");
                    prop_assert!(matches!(ours.opcode, 0x3..=0x7 | 0xB..=0xF));
                    return Ok(());
                }
            };
            match (header(&bytes), theirs) {
                (None, None) => {}
                (Some(ours), Some((theirs, len))) => {
                    prop_assert_eq!(ours.fin, theirs.is_final);
                    prop_assert_eq!(ours.rsv, u8::from(theirs.rsv1) << 6 | u8::from(theirs.rsv2) << 5 | u8::from(theirs.rsv3) << 4);
                    prop_assert_eq!(ours.opcode, u8::from(theirs.opcode));
                    prop_assert_eq!(ours.mask, theirs.mask);
                    prop_assert_eq!(ours.len, len);
                    prop_assert_eq!(ours.size as u64, cursor.position());
                    prop_assert_eq!(ours.is_control(), matches!(theirs.opcode, OpCode::Control(_)));
                }
                (ours, theirs) => prop_assert!(false, "ours {:?}, tungstenite's {:?}", ours, theirs),
            }
        }

        /// Nothing but what `encode` makes parses: cut or lengthened frames do not.
        #[test]
        fn a_cut_frame_does_not_parse(payload in prop::collection::vec(any::<u8>(), 1..300),
                                      cut in 1usize..300) {
            let bytes = encode(BINARY, &payload);
            let cut = cut.min(bytes.len());
            prop_assert_eq!(parse(&bytes[..bytes.len() - cut]), None);
        }
    }
}
