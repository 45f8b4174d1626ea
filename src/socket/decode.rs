//! Client frames put together into messages (RFC 6455 sections 5 and 8), without I/O: the
//! reader ([`super::inbound`]) hands the decoder whatever bytes one read returned, and gets the
//! messages back one at a time.
//!
//! Between frames the decoder holds nothing on the heap. Only a frame cut by the end of a read
//! keeps its bytes (in `partial`, until its last byte arrives), and only a fragmented message
//! keeps its first frames' payload (until its final frame). Every frame is checked from its
//! header alone, before any of its payload is kept: a frame that breaks the protocol, or one
//! that would make its message larger than the limits, fails the connection at once.
//!
//! What fails the connection, and with which close code (7.4.1):
//!
//! | input | code |
//! |---|---|
//! | an unmasked frame (5.1), reserved bits set (5.2), an unknown opcode | 1002 |
//! | a control frame fragmented or longer than 125 bytes (5.5) | 1002 |
//! | a continuation without a message, a new message inside a fragmented one (5.4) | 1002 |
//! | a close frame of one byte, or with a code that may not be sent (7.4) | 1002 |
//! | a text message, or a close reason, that is not UTF-8 (8.1) | 1007 |
//! | a frame longer than the frame limit, a message longer than the message limit | 1009 |

use bytes::Bytes;

use super::frame::{
    self, Header, BINARY, CLOSE, CONTINUATION, MAX_CONTROL_PAYLOAD, PING, PONG, TEXT,
};

/// A client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping and its payload.
    Ping(Bytes),
    /// A pong and its payload.
    Pong(Bytes),
    /// A close frame: its code and reason, `None` when it carried no code.
    Close(Option<(u16, String)>),
}

/// Why the connection fails: the code and reason of the close frame to fail it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The close code: 1002, 1007 or 1009.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
}

/// Close code of a protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code of data that does not match its type (text that is not UTF-8).
pub const INVALID_DATA: u16 = 1007;
/// Close code of a message too big to process.
pub const TOO_BIG: u16 = 1009;

fn protocol(reason: &'static str) -> Failure {
    Failure {
        code: PROTOCOL_ERROR,
        reason,
    }
}

/// The largest frame and message the decoder accepts, in payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most payload bytes of one frame.
    pub max_frame: usize,
    /// Most payload bytes of one message, all its frames together.
    pub max_message: usize,
}

/// Puts client frames together into messages.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// The bytes of a frame cut by the end of a read, still masked, header included; empty,
    /// with nothing allocated, between frames.
    partial: Vec<u8>,
    /// A fragmented message's frames so far.
    fragments: Option<Box<Fragments>>,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// How much of a text message's data is known to be UTF-8: a fragment may end inside a
    /// character, but not with bytes no character starts with.
    valid: usize,
}

impl Fragments {
    /// Checks a text message's data as far as it goes, so that a message fails at the first
    /// fragment that cannot be UTF-8.
    fn check_text(&mut self) -> Result<(), Failure> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        }
        Ok(())
    }
}

impl Decoder {
    /// A decoder that accepts frames and messages up to `limits`.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            partial: Vec::new(),
            fragments: None,
        }
    }

    /// Whether the decoder holds nothing on the heap (between messages, no frame cut).
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.fragments.is_none()
    }

    /// Decodes `input` up to the end of its first whole message: that message, if one ended,
    /// and how many bytes of `input` were used. What the used bytes began and did not end (a
    /// frame, a fragmented message) is kept for the next call. After a failure the decoder
    /// must not be used again.
    pub fn decode(&mut self, input: &[u8]) -> Result<(Option<Message>, usize), Failure> {
        let mut used = 0;
        loop {
            if !self.partial.is_empty() {
                // The header first, then the rest of the frame: no byte past the frame's end.
                let header = loop {
                    if let Some(header) = frame::header(&self.partial) {
                        break header;
                    }
                    let have = self.partial.len();
                    let size = match self.partial.get(1) {
                        Some(&second) => header_size(second),
                        None => 2,
                    };
                    let take = (size - have).min(input.len() - used);
                    if take == 0 {
                        return Ok((None, used));
                    }
                    self.partial.extend_from_slice(&input[used..used + take]);
                    used += take;
                };
                let end = self.check(&header)?;
                let take = (end - self.partial.len()).min(input.len() - used);
                self.partial.extend_from_slice(&input[used..used + take]);
                used += take;
                if self.partial.len() < end {
                    return Ok((None, used));
                }
                // The frame's allocation goes with it.
                let whole = std::mem::take(&mut self.partial);
                if let Some(message) = self.frame(&header, &whole[header.size..])? {
                    return Ok((Some(message), used));
                }
                continue;
            }
            let rest = &input[used..];
            if rest.is_empty() {
                return Ok((None, used));
            }
            let Some(header) = frame::header(rest) else {
                // Fewer bytes than the header takes.
                self.partial.extend_from_slice(rest);
                return Ok((None, input.len()));
            };
            let end = self.check(&header)?;
            if rest.len() < end {
                // A short frame's room at once; a long one's as its bytes arrive, so that a
                // header alone cannot make the decoder allocate its announced length.
                self.partial
                    .reserve_exact(if end <= 4096 { end } else { rest.len() });
                self.partial.extend_from_slice(rest);
                return Ok((None, input.len()));
            }
            used += end;
            if let Some(message) = self.frame(&header, &rest[header.size..end])? {
                return Ok((Some(message), used));
            }
        }
    }

    /// Checks a frame from its header: the frame's whole length (header included) if it may
    /// be read. The checks run in tungstenite's order, so that a frame with several faults
    /// fails with the code tungstenite gave it.
    fn check(&self, header: &Header) -> Result<usize, Failure> {
        let too_big = Failure {
            code: TOO_BIG,
            reason: "message too big",
        };
        if !matches!(
            header.opcode,
            CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG
        ) {
            return Err(protocol("unknown opcode"));
        }
        let len = header.len;
        if len > self.limits.max_frame as u64 {
            return Err(too_big);
        }
        if header.mask.is_none() {
            return Err(protocol("unmasked client frame"));
        }
        if header.rsv != 0 {
            return Err(protocol("reserved bits set"));
        }
        if header.is_control() {
            if !header.fin {
                return Err(protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(protocol("control frame longer than 125 bytes"));
            }
        } else {
            match (header.opcode, &self.fragments) {
                (CONTINUATION, None) => return Err(protocol("continuation without a message")),
                (TEXT | BINARY, Some(_)) => {
                    return Err(protocol("new message inside a fragmented one"))
                }
                _ => {}
            }
            let before = self.fragments.as_ref().map_or(0, |f| f.data.len() as u64);
            if before + len > self.limits.max_message as u64 {
                return Err(too_big);
            }
        }
        // The length fits: at most the frame limit (a `usize`).
        Ok(header.size + len as usize)
    }

    /// A whole frame, checked, with its still masked `payload`: the message it ends, if any.
    fn frame(&mut self, header: &Header, payload: &[u8]) -> Result<Option<Message>, Failure> {
        let mask = header.mask.unwrap_or_default();
        let unmasked = || {
            let mut data = Vec::with_capacity(payload.len());
            unmask_into(&mut data, payload, mask);
            data
        };
        match header.opcode {
            PING => Ok(Some(Message::Ping(Bytes::from(unmasked())))),
            PONG => Ok(Some(Message::Pong(Bytes::from(unmasked())))),
            CLOSE => close(&unmasked()).map(Some),
            opcode => match self.fragments.take() {
                None if header.fin => message(opcode == TEXT, unmasked()).map(Some),
                None => {
                    let mut fragments = Box::new(Fragments {
                        text: opcode == TEXT,
                        data: unmasked(),
                        valid: 0,
                    });
                    fragments.check_text()?;
                    self.fragments = Some(fragments);
                    Ok(None)
                }
                Some(mut fragments) => {
                    unmask_into(&mut fragments.data, payload, mask);
                    fragments.check_text()?;
                    if header.fin {
                        message(fragments.text, fragments.data).map(Some)
                    } else {
                        self.fragments = Some(fragments);
                        Ok(None)
                    }
                }
            },
        }
    }
}

/// Bytes of a header whose second byte is `second`.
fn header_size(second: u8) -> usize {
    let len = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + len + mask
}

fn message(text: bool, data: Vec<u8>) -> Result<Message, Failure> {
    if text {
        String::from_utf8(data)
            .map(Message::Text)
            .map_err(|_| not_utf8())
    } else {
        Ok(Message::Binary(Bytes::from(data)))
    }
}

fn not_utf8() -> Failure {
    Failure {
        code: INVALID_DATA,
        reason: "text is not UTF-8",
    }
}

fn close(payload: &[u8]) -> Result<Message, Failure> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(Message::Close(None))
        } else {
            Err(protocol("close frame of one byte"))
        };
    };
    let reason = String::from_utf8(reason.to_vec()).map_err(|_| Failure {
        code: INVALID_DATA,
        reason: "close reason is not UTF-8",
    })?;
    let code = u16::from_be_bytes(*code);
    if !may_be_sent(code) {
        return Err(protocol("invalid close code"));
    }
    Ok(Message::Close(Some((code, reason))))
}

/// Whether an endpoint may send `code` in a close frame (7.4.1, 7.4.2): the codes defined for
/// use, and those of the IANA registry (3000–3999) and of applications (4000–4999).
pub fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// Appends `masked` to `out`, unmasked with `mask` (5.3).
fn unmask_into(out: &mut Vec<u8>, masked: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(masked);
    apply_mask(&mut out[start..], mask);
}

/// XORs `bytes` with `mask`, the first byte with the mask's first byte.
pub fn apply_mask(bytes: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        let mut value = [0u8; 8];
        value.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(value) ^ wide).to_ne_bytes());
    }
    // Whole words keep the mask's phase: the rest starts with its first byte.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
