//! The decoder against hostile input: every fault of the table with its code, any split of the
//! input, random bytes, and tungstenite (the reader it replaced) as the oracle on whole frames.

use super::*;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite;

const LIMIT: usize = 1000;
const LIMITS: Limits = Limits {
    max_frame: LIMIT,
    max_message: LIMIT,
};
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// How a decoding ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The input ran out.
    Eof,
    /// A close frame arrived (the session reads nothing after it).
    Closed,
    /// The connection failed with this code.
    Failed(u16),
}

/// A client frame: FIN, RSV bits (in place), opcode, mask, payload.
fn client_frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | rsv & 0x70 | opcode & 0x0F];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(masked | len as u8),
        len @ 126..=0xFFFF => {
            out.push(masked | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(masked | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        out.extend_from_slice(&[0; 4]);
        out.copy_within(start..start + payload.len(), start + 4);
        out[start..start + 4].copy_from_slice(&mask);
        apply_mask(&mut out[start + 4..], mask);
    }
    out
}

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, 0, opcode, Some(MASK), payload)
}

/// Decodes `chunks` as successive reads: the messages up to the first close, and the end.
fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Message>, End) {
    let mut decoder = Decoder::new(LIMITS);
    let mut messages = Vec::new();
    for chunk in chunks {
        let mut rest = chunk;
        loop {
            match decoder.decode(rest) {
                Err(failure) => return (messages, End::Failed(failure.code)),
                Ok((Some(message), used)) => {
                    rest = &rest[used..];
                    let closed = matches!(message, Message::Close(_));
                    messages.push(message);
                    if closed {
                        return (messages, End::Closed);
                    }
                }
                Ok((None, used)) => {
                    assert_eq!(used, rest.len(), "no message, yet bytes left over");
                    break;
                }
            }
        }
        assert!(
            decoder.partial.len() <= 14 + LIMIT,
            "a frame's bytes beyond its limit are kept: {}",
            decoder.partial.len()
        );
    }
    (messages, End::Eof)
}

fn whole(bytes: &[u8]) -> (Vec<Message>, End) {
    run([bytes])
}

/// What tungstenite's server side makes of `bytes`, with the same limits.
fn tungstenite_reads(bytes: &[u8]) -> (Vec<Message>, End) {
    use tungstenite::error::{Error, ProtocolError};
    use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    struct Input(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Input {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Write for Input {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let config = WebSocketConfig::default()
        .max_frame_size(Some(LIMIT))
        .max_message_size(Some(LIMIT));
    let input = Input(std::io::Cursor::new(bytes.to_vec()));
    let mut ws = WebSocket::from_raw_socket(input, Role::Server, Some(config));
    let mut messages = Vec::new();
    loop {
        let message = match ws.read() {
            Ok(tungstenite::Message::Text(text)) => Message::Text(text.as_str().to_owned()),
            Ok(tungstenite::Message::Binary(bytes)) => Message::Binary(bytes),
            Ok(tungstenite::Message::Ping(bytes)) => Message::Ping(bytes),
            Ok(tungstenite::Message::Pong(bytes)) => Message::Pong(bytes),
            Ok(tungstenite::Message::Close(frame)) => {
                let frame = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                // Tungstenite answers a code that may not be sent with 1002; the decoder
                // fails the connection with 1002.
                if first_close_code(bytes).is_some_and(|c| !may_be_sent(c)) {
                    assert_eq!(frame, Some((1002, "Protocol violation".to_owned())));
                    return (messages, End::Failed(PROTOCOL_ERROR));
                }
                messages.push(Message::Close(frame));
                return (messages, End::Closed);
            }
            Ok(tungstenite::Message::Frame(_)) => unreachable!("never read"),
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return (messages, End::Eof)
            }
            Err(Error::Capacity(_)) => return (messages, End::Failed(TOO_BIG)),
            Err(Error::Utf8(_)) => return (messages, End::Failed(INVALID_DATA)),
            Err(Error::Protocol(_)) => return (messages, End::Failed(PROTOCOL_ERROR)),
            Err(e) => panic!("unexpected: {e}"),
        };
        messages.push(message);
    }
}

/// The code the first close frame of `bytes` carries, whatever it is.
fn first_close_code(bytes: &[u8]) -> Option<u16> {
    let mut rest = bytes;
    while let Some(header) = frame::header(rest) {
        let end = header.size.checked_add(usize::try_from(header.len).ok()?)?;
        let payload = rest.get(header.size..end)?;
        if header.opcode == CLOSE {
            if payload.len() < 2 {
                return None;
            }
            let mut payload = payload.to_vec();
            apply_mask(&mut payload, header.mask.unwrap_or_default());
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        rest = &rest[end..];
    }
    None
}

#[test]
fn every_fault_fails_with_its_code() {
    let text = |p: &[u8]| masked(true, TEXT, p);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", client_frame(true, 0, TEXT, None, b"hi"), 1002),
        (
            "rsv1",
            client_frame(true, 0x40, TEXT, Some(MASK), b"hi"),
            1002,
        ),
        (
            "rsv3",
            client_frame(true, 0x10, PING, Some(MASK), b""),
            1002,
        ),
        ("opcode 3", masked(true, 0x3, b"x"), 1002),
        ("opcode 0xB", masked(true, 0xB, b"x"), 1002),
        ("fragmented ping", masked(false, PING, b"x"), 1002),
        ("long ping", masked(true, PING, &[1; 126]), 1002),
        ("lone continuation", masked(true, CONTINUATION, b"x"), 1002),
        (
            "text inside a message",
            [masked(false, TEXT, b"a"), text(b"b")].concat(),
            1002,
        ),
        ("close of one byte", masked(true, CLOSE, &[3]), 1002),
        (
            "close code 1005",
            masked(true, CLOSE, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            masked(true, CLOSE, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 5000",
            masked(true, CLOSE, &5000u16.to_be_bytes()),
            1002,
        ),
        ("invalid text", text(&[0xC3, 0x28]), 1007),
        (
            "invalid first fragment",
            masked(false, TEXT, &[0xFF, b'a']),
            1007,
        ),
        (
            "cut character at the end",
            [
                masked(false, TEXT, &[0xC3]),
                masked(true, CONTINUATION, b""),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid close reason",
            masked(true, CLOSE, &[3, 232, 0xFF]),
            1007,
        ),
        ("long frame", text(&vec![b'a'; LIMIT + 1]), 1009),
        (
            "long message",
            [
                masked(false, BINARY, &vec![0; LIMIT / 2]),
                masked(true, CONTINUATION, &vec![0; LIMIT / 2 + 1]),
            ]
            .concat(),
            1009,
        ),
        // The frame limit first, as tungstenite checks it.
        (
            "long and unmasked",
            client_frame(true, 0, TEXT, None, &[0; LIMIT + 1]),
            1009,
        ),
    ];
    for (name, bytes, code) in cases {
        assert_eq!(whole(&bytes).1, End::Failed(code), "{name}");
        assert_eq!(
            tungstenite_reads(&bytes).1,
            End::Failed(code),
            "{name}, tungstenite"
        );
        // A frame that can only fail fails from its header, before its payload arrives.
        let cut = frame::header(&bytes).unwrap().size;
        let early = whole(&bytes[..cut]).1;
        assert!(
            early == End::Eof || early == End::Failed(code),
            "{name}: {early:?}"
        );
    }
}

#[test]
fn a_fragmented_message_with_control_frames_between_its_fragments() {
    let bytes = [
        masked(false, TEXT, "h\u{e9}".as_bytes()),
        masked(true, PING, b"p1"),
        masked(false, CONTINUATION, &[0xC3]), // half of a character
        masked(true, PONG, b""),
        masked(true, CONTINUATION, &[0xA9, b'!']),
        masked(true, BINARY, &[0, 1, 2]),
        masked(true, CLOSE, &[0x0F, 0xA1, b'o', b'k']),
        masked(true, TEXT, b"after the close"),
    ]
    .concat();
    let expected = vec![
        Message::Ping(Bytes::from_static(b"p1")),
        Message::Pong(Bytes::new()),
        Message::Text("h\u{e9}\u{e9}!".to_owned()),
        Message::Binary(Bytes::from_static(&[0, 1, 2])),
        Message::Close(Some((4001, "ok".to_owned()))),
    ];
    assert_eq!(whole(&bytes), (expected.clone(), End::Closed));
    assert_eq!(tungstenite_reads(&bytes), (expected, End::Closed));
}

#[test]
fn an_empty_close_and_empty_messages() {
    let bytes = [
        masked(true, TEXT, b""),
        masked(false, BINARY, b""),
        masked(true, CONTINUATION, b""),
        masked(true, CLOSE, b""),
    ]
    .concat();
    let expected = vec![
        Message::Text(String::new()),
        Message::Binary(Bytes::new()),
        Message::Close(None),
    ];
    assert_eq!(whole(&bytes), (expected, End::Closed));
}

/// Nothing stays allocated between messages, whatever the reads cut; a fragmented message
/// keeps only its own data.
#[test]
fn nothing_is_kept_between_messages() {
    let first = masked(true, TEXT, &[b'a'; 300]);
    let bytes = [&first[..], &masked(true, PING, b"x")].concat();
    for cut in 0..first.len() {
        let mut decoder = Decoder::new(LIMITS);
        let (first, used) = decoder.decode(&bytes[..cut]).unwrap();
        assert_eq!((first, used), (None, cut));
        assert_eq!(decoder.is_idle(), cut == 0, "cut at {cut}");
        let (message, used) = decoder.decode(&bytes[cut..]).unwrap();
        assert!(matches!(message, Some(Message::Text(_))), "cut at {cut}");
        assert!(decoder.is_idle(), "idle after the text, cut at {cut}");
        let (message, _) = decoder.decode(&bytes[cut + used..]).unwrap();
        assert_eq!(message, Some(Message::Ping(Bytes::from_static(b"x"))));
        assert!(decoder.is_idle());
    }
    let mut decoder = Decoder::new(LIMITS);
    assert_eq!(
        decoder.decode(&masked(false, BINARY, b"ab")).unwrap().0,
        None
    );
    assert!(!decoder.is_idle());
    let done = decoder.decode(&masked(true, CONTINUATION, b"c")).unwrap().0;
    assert_eq!(done, Some(Message::Binary(Bytes::from_static(b"abc"))));
    assert!(decoder.is_idle());
}

/// A header announcing a long frame makes the decoder allocate what arrived, not what was
/// announced.
#[test]
fn an_announced_length_is_not_allocated_ahead() {
    let mut decoder = Decoder::new(Limits {
        max_frame: 1 << 30,
        max_message: 1 << 30,
    });
    let bytes = masked(true, BINARY, &vec![0; 1 << 20]);
    decoder.decode(&bytes[..100]).unwrap();
    assert!(decoder.partial.capacity() < 4096);
}

#[test]
fn the_mask_applies_at_any_length_and_phase() {
    for len in 0..40 {
        let data: Vec<u8> = (0..len as u8).collect();
        let mut once = data.clone();
        apply_mask(&mut once, MASK);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(once, slow);
        apply_mask(&mut once, MASK);
        assert_eq!(once, data);
    }
}

/// A frame as the strategies make it: mostly well formed, sometimes not.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let opcode = prop_oneof![
        8 => prop::sample::select(vec![CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG]),
        1 => 0u8..16,
    ];
    let payload = prop_oneof![
        4 => "[a-zé€😀 ]{0,40}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::collection::vec(any::<u8>(), 0..1100),
        1 => (prop::sample::select(vec![1000u16, 1001, 1005, 1016, 3000, 4999, 5000]), "[a-z]{0,5}")
            .prop_map(|(code, reason)| [&code.to_be_bytes()[..], reason.as_bytes()].concat()),
    ];
    let rsv = prop_oneof![20 => Just(0u8), 1 => prop::sample::select(vec![0x10u8, 0x20, 0x40])];
    let mask = prop_oneof![20 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)];
    (any::<bool>(), rsv, opcode, mask, payload).prop_map(|(fin, rsv, opcode, mask, payload)| {
        let fin = fin || opcode & 0x8 != 0;
        let payload = if opcode & 0x8 != 0 && payload.len() > 125 {
            payload[..125].to_vec()
        } else {
            payload
        };
        client_frame(fin, rsv, opcode, mask, &payload)
    })
}

fn any_frames() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any_frame(), 0..12).prop_map(|frames| frames.concat())
}

/// `bytes` cut at `cuts` (positions taken modulo its length).
fn cut_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for point in points.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[from..point]);
        from = point;
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Tungstenite, the reader the decoder replaced, reads whole frames the same way: the same
    /// messages, and the same end with the same code.
    #[test]
    fn whole_frames_read_as_tungstenite_reads_them(bytes in any_frames()) {
        prop_assert_eq!(whole(&bytes), tungstenite_reads(&bytes));
    }

    /// However the reads cut the input, the messages and the end are the same; where the input
    /// ends inside a frame, the end may come sooner (a frame fails from its header).
    #[test]
    fn any_cut_decodes_the_same(bytes in any_frames(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let expected = whole(&bytes);
        prop_assert_eq!(run(cut_at(&bytes, &cuts)), expected.clone());
        prop_assert_eq!(run(bytes.chunks(1)), expected);
    }

    /// Every split of the input in two, at each byte boundary.
    #[test]
    fn every_split_in_two_decodes_the_same(bytes in prop::collection::vec(any_frame(), 1..4).prop_map(|f| f.concat())) {
        let expected = whole(&bytes);
        for at in 0..=bytes.len() {
            prop_assert_eq!(run([&bytes[..at], &bytes[at..]]), expected.clone(), "split at {}", at);
        }
    }

    /// Random bytes: no panic, the same outcome however they are cut, and never more kept
    /// than a frame's limit (checked in `run`).
    #[test]
    fn random_bytes_are_survived(bytes in prop::collection::vec(any::<u8>(), 0..3000),
                                 cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let expected = whole(&bytes);
        prop_assert_eq!(run(cut_at(&bytes, &cuts)), expected.clone());
        prop_assert_eq!(run(bytes.chunks(7)), expected);
    }

    /// A prefix of the input decodes to a prefix of its messages.
    #[test]
    fn a_prefix_decodes_to_a_prefix(bytes in any_frames(), cut in any::<usize>()) {
        let (all, end) = whole(&bytes);
        let cut = cut % (bytes.len() + 1);
        let (some, some_end) = whole(&bytes[..cut]);
        prop_assert!(all.starts_with(&some));
        if some_end != End::Eof {
            prop_assert_eq!((some, some_end), (all, end));
        }
    }
}
