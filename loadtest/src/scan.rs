//! Reading a Postgres Changes delivery straight from the frame's bytes.
//!
//! Nearly every frame a client receives during a run is a delivery, and a client checks only
//! a few of its fields: the topic it came on, the table, the row's `run` and `n`, and the
//! commit stamp. [`delivery`] walks the vsn 2 array once, skipping everything else without
//! decoding it, and returns those fields as slices of the frame: no JSON tree, no allocation.
//! Anything that is not a delivery (replies, presence, system messages) gives `None` and goes
//! through the gateway's own codec instead.
//!
//! Strings are returned as they appear between their quotes: escapes are not decoded. The
//! names compared against (topics, the events table) contain none, and a string that holds a
//! backslash never equals them by accident.
//!
//! Every subscriber of a topic receives the same bytes for a change, so the clients read
//! through [`with_delivery`]: each thread keeps what it found in the frames it scanned last, by
//! their bytes, and a frame equal to one of them (compared in full) is not scanned again. The
//! scanner is a function of the bytes alone, so what a client sees is what a scan would give.

use std::cell::RefCell;
use std::ops::Range;

/// The fields of a delivery a client checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery<'a> {
    /// The frame's topic, e.g. `realtime:loadtest-0` (raw string contents).
    pub(crate) topic: &'a str,
    /// `payload.data.table` (raw string contents).
    pub(crate) table: &'a str,
    /// `payload.data.record.run`: the run that wrote the row.
    pub(crate) run: i64,
    /// `payload.data.record.n`: the row's sequence number in its run.
    pub(crate) n: u64,
    /// `payload.data.commit_timestamp` when it is a string (raw string contents).
    pub(crate) commit_timestamp: Option<&'a str>,
}

/// The checked fields of a vsn 2 `postgres_changes` frame; `None` for any other frame, and
/// for a delivery without a string `table` or integer `run` and `n` in its record.
pub(crate) fn delivery(frame: &[u8]) -> Option<Delivery<'_>> {
    // One check of the whole frame (JSON text is UTF-8 throughout) instead of one per string:
    // every string then ends at an ASCII quote, so slicing it out is always on a boundary.
    let text = std::str::from_utf8(frame).ok()?;
    let mut c = Cursor {
        t: text,
        s: text.as_bytes(),
        i: 0,
    };
    c.byte(b'[')?;
    c.skip_value()?;
    c.byte(b',')?;
    c.skip_value()?;
    c.byte(b',')?;
    let topic = c.string()?;
    c.byte(b',')?;
    if c.string()? != "postgres_changes" {
        return None;
    }
    c.byte(b',')?;
    let mut table = None;
    let mut stamp = None;
    let mut record = None;
    c.object(|c, key| {
        if key != "data" {
            return c.skip_value();
        }
        c.object(|c, key| match key {
            "table" => {
                table = c.string_or_skip()?;
                Some(())
            }
            "commit_timestamp" => {
                stamp = c.string_or_skip()?;
                Some(())
            }
            "record" => {
                if c.peek()? != b'{' {
                    record = None;
                    return c.skip_value();
                }
                let (mut run, mut n) = (None, None);
                c.object(|c, key| match key {
                    "run" => {
                        run = c.integer_or_skip()?;
                        Some(())
                    }
                    "n" => {
                        n = c.integer_or_skip()?;
                        Some(())
                    }
                    _ => c.skip_value(),
                })?;
                record = Some((run, n));
                Some(())
            }
            _ => c.skip_value(),
        })
    })?;
    c.byte(b']')?;
    c.ws();
    if c.i != c.s.len() {
        return None;
    }
    let (run, n) = record?;
    Some(Delivery {
        topic,
        table: table?,
        run: i64::try_from(run?).ok()?,
        n: u64::try_from(n?).ok()?,
        commit_timestamp: stamp,
    })
}

/// Frames a thread remembers (a power of two), about 0.5 KiB each: the clients of a saturated
/// run read seconds behind the writer and apart from each other, and every distinct frame in
/// between must still be here when the next client reads it (4,096: 4 s at 1,000 changes a
/// second; with 256, a run that fell 6 s behind cost the tester as much as scanning every frame).
const MEMO_SLOTS: usize = 4096;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::new(MEMO_SLOTS));
}

/// Calls `f` with what [`delivery`] finds in `frame`, remembered by this thread for frames it
/// has seen. Not reentrant: `f` must not call it again.
pub(crate) fn with_delivery<R>(frame: &[u8], f: impl FnOnce(Option<Delivery<'_>>) -> R) -> R {
    MEMO.with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => f(memo.find(frame)),
        // Only if `f` called this again: scan without the memo.
        Err(_) => f(delivery(frame)),
    })
}

/// A delivery's fields as positions in its frame's copy.
struct Found {
    frame: String,
    topic: Range<usize>,
    table: Range<usize>,
    run: i64,
    n: u64,
    commit_timestamp: Option<Range<usize>>,
}

impl Found {
    fn delivery(&self) -> Option<Delivery<'_>> {
        let at = |r: &Range<usize>| self.frame.get(r.clone());
        Some(Delivery {
            topic: at(&self.topic)?,
            table: at(&self.table)?,
            run: self.run,
            n: self.n,
            commit_timestamp: match &self.commit_timestamp {
                Some(r) => Some(at(r)?),
                None => None,
            },
        })
    }
}

/// The deliveries found in the frames scanned last, one per slot, the slot chosen by the
/// frame's hash (a later frame with the same slot replaces it). Frames that are no delivery
/// are not kept.
struct Memo {
    slots: Vec<Option<(u64, Found)>>,
    /// [`hash`]; another in tests, to make frames collide.
    hash: fn(&[u8]) -> u64,
}

impl Memo {
    fn new(slots: usize) -> Memo {
        Memo {
            slots: (0..slots).map(|_| None).collect(),
            hash,
        }
    }

    fn find(&mut self, frame: &[u8]) -> Option<Delivery<'_>> {
        let hash = (self.hash)(frame);
        // The high bits: a product's are the best mixed.
        let slot = (hash >> 40) as usize & (self.slots.len() - 1);
        let known = matches!(&self.slots[slot],
            Some((h, found)) if *h == hash && found.frame.as_bytes() == frame);
        if !known {
            let d = delivery(frame)?;
            // Every field is a slice of the frame, so its place there is its offset.
            let base = frame.as_ptr() as usize;
            let place = |s: &str| {
                let start = s.as_ptr() as usize - base;
                start..start + s.len()
            };
            let (topic, table) = (place(d.topic), place(d.table));
            let commit_timestamp = d.commit_timestamp.map(place);
            let (run, n) = (d.run, d.n);
            // `delivery` accepted the frame, so it is UTF-8.
            let text = std::str::from_utf8(frame).ok()?;
            // The copy reuses the room of the frame it replaces.
            let mut copy = self.slots[slot]
                .take()
                .map_or_else(String::new, |(_, old)| old.frame);
            copy.clear();
            copy.push_str(text);
            self.slots[slot] = Some((
                hash,
                Found {
                    frame: copy,
                    topic,
                    table,
                    run,
                    n,
                    commit_timestamp,
                },
            ));
        }
        self.slots[slot].as_ref()?.1.delivery()
    }
}

/// A fast hash of the frame's bytes, eight at a time (FxHash's step); only to pick a slot and
/// to skip most comparisons of unequal frames, which are compared in full anyway.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = step(h, u64::from_le_bytes(word));
    }
    for &b in chunks.remainder() {
        h = step(h, u64::from(b));
    }
    h
}

/// A position in the frame. Every method returns `None` on bytes that are not the JSON it
/// expects; none of them panics or allocates.
struct Cursor<'a> {
    /// The frame, checked to be UTF-8.
    t: &'a str,
    /// The same bytes.
    s: &'a [u8],
    i: usize,
}

/// The first position at or after `i` holding a byte that ends a string's run of plain
/// characters: `"`, `\` or a control character (which JSON does not allow unescaped). Eight
/// bytes at a time: a delivery is mostly string contents (the row's values, column names).
fn string_stop(s: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// High bit of each byte of `x` that is below `n` (n <= 0x80). Bytes above the lowest such
    /// byte may be flagged falsely (a borrow), never a byte below it.
    fn below(x: u64, n: u8) -> u64 {
        x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
    }
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte equal to `c` is a zero byte of `x ^ c…c`, i.e. below 1.
        let hit = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hit != 0 {
            // Little-endian: the lowest flagged byte comes first in the frame, and is a true hit.
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = s.get(i..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    /// Consumes `b`, after whitespace.
    fn byte(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.i;
        loop {
            self.i = string_stop(self.s, self.i)?;
            match self.s[self.i] {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => return None,
            }
        }
        let raw = self.t.get(start..self.i)?;
        self.i += 1;
        Some(raw)
    }

    /// `Some(Some(s))` for a string, `Some(None)` for any other value (skipped).
    fn string_or_skip(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'"' {
            self.string().map(Some)
        } else {
            self.skip_value().map(|()| None)
        }
    }

    /// `Some(Some(v))` for an integer that fits an `i128` (no fraction, no exponent),
    /// `Some(None)` for any other value (skipped).
    fn integer_or_skip(&mut self) -> Option<Option<i128>> {
        let start = {
            self.ws();
            self.i
        };
        let negative = self.s.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let digits = self.i;
        let mut value: i128 = 0;
        while let Some(&d @ b'0'..=b'9') = self.s.get(self.i) {
            value = value.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
            self.i += 1;
        }
        let integral = self.i > digits
            && !matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E'))
            // JSON has no leading zeros.
            && !(self.s[digits] == b'0' && self.i - digits > 1);
        if integral {
            return Some(Some(if negative { -value } else { value }));
        }
        self.i = start;
        self.skip_value().map(|()| None)
    }

    /// Walks an object, calling `field` with each key; `field` must consume the value.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Cursor<'a>, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.byte(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.byte(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skips one value of any kind, nested ones included, without building it.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    self.i += 1;
                    depth += 1;
                    continue;
                }
                b'}' | b']' if depth > 0 => {
                    self.i += 1;
                    depth -= 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    let start = self.i;
                    while let Some(b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'.' | b'E') =
                        self.s.get(self.i)
                    {
                        self.i += 1;
                    }
                    let token = &self.s[start..self.i];
                    let literal = matches!(token, b"true" | b"false" | b"null");
                    if !literal && !token[0].is_ascii_digit() && token[0] != b'-' {
                        return None;
                    }
                }
                _ => return None,
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const FRAME: &str = r#"[null,null,"realtime:c","postgres_changes",{"ids":[1],"data":{"schema":"public","table":"loadtest_events","type":"INSERT","commit_timestamp":"2025-01-01T00:00:00.000Z","columns":[{"name":"id","type":"int8"}],"record":{"id":9,"run":42,"n":7,"payload":"x"},"errors":null}}]"#;

    #[test]
    fn a_gateway_delivery_is_read() {
        assert_eq!(
            delivery(FRAME.as_bytes()),
            Some(Delivery {
                topic: "realtime:c",
                table: "loadtest_events",
                run: 42,
                n: 7,
                commit_timestamp: Some("2025-01-01T00:00:00.000Z"),
            })
        );
    }

    #[test]
    fn other_frames_are_not_deliveries() {
        for text in [
            r#"[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
            r#"["1",null,"realtime:c","system",{"status":"ok","extension":"postgres_changes"}]"#,
            r#"{"topic":"realtime:c","event":"postgres_changes","payload":{}}"#,
            "",
            "[",
            // Truncated, trailing garbage, a fractional or too large n.
            &FRAME[..FRAME.len() - 1],
            &format!("{FRAME}x"),
            &FRAME.replace(r#""n":7"#, r#""n":7.0"#),
            &FRAME.replace(r#""n":7"#, r#""n":-7"#),
            &FRAME.replace(r#""n":7"#, r#""n":99999999999999999999999"#),
            &FRAME.replace(r#""n":7"#, r#""n":"7""#),
        ] {
            assert_eq!(delivery(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn look_alike_keys_inside_strings_and_other_objects_are_skipped() {
        let tricky = FRAME.replace(
            r#""payload":"x""#,
            r#""payload":"\"n\":1,\"run\":2}","nested":{"n":3,"run":4}"#,
        );
        let d = delivery(tricky.as_bytes()).unwrap();
        assert_eq!((d.run, d.n), (42, 7));
    }

    #[test]
    fn a_control_byte_or_bad_utf8_anywhere_in_a_skipped_string_is_refused() {
        // The row's payload is skipped; where in it the bad byte sits must not matter.
        for at in 0..40 {
            for bad in [0x00u8, 0x07, 0x1f, 0xff, 0xc3] {
                let mut value = vec![b'y'; 40];
                value[at] = bad;
                let mut frame = FRAME
                    .replace(r#""payload":"x""#, r#""payload":"@""#)
                    .into_bytes();
                let hole = frame.iter().position(|&b| b == b'@').unwrap();
                frame.splice(hole..=hole, value);
                assert_eq!(delivery(&frame), None, "byte {bad:#x} at {at}");
            }
        }
    }

    #[test]
    fn escaped_quotes_at_every_offset_are_skipped() {
        for at in 0..24 {
            let value = format!("{}\\\"{}", "z".repeat(at), "z".repeat(24 - at));
            let frame = FRAME.replace(r#""payload":"x""#, &format!(r#""payload":"{value}""#));
            let d = delivery(frame.as_bytes()).unwrap_or_else(|| panic!("{frame}"));
            assert_eq!((d.run, d.n), (42, 7));
            assert_eq!(Some(decoded(d)), by_serde(&frame));
        }
    }

    #[test]
    fn the_memo_tells_apart_frames_that_differ_in_one_byte() {
        let one = FRAME.replace(r#""n":7"#, r#""n":1"#);
        let two = FRAME.replace(r#""n":7"#, r#""n":2"#);
        let collide: fn(&[u8]) -> u64 = |_| 7;
        for (slots, hash) in [
            (1, collide),
            (256, collide),
            (256, hash as fn(&[u8]) -> u64),
        ] {
            let mut memo = Memo {
                hash,
                ..Memo::new(slots)
            };
            for (frame, n) in [(&one, 1), (&two, 2), (&one, 1), (&one, 1), (&two, 2)] {
                assert_eq!(
                    memo.find(frame.as_bytes()).map(|d| d.n),
                    Some(n),
                    "{slots} slots"
                );
            }
        }
        // Through the thread's memo, as the clients read.
        for (frame, n) in [(&one, 1), (&two, 2), (&one, 1)] {
            assert_eq!(with_delivery(frame.as_bytes(), |d| d.map(|d| d.n)), Some(n));
        }
    }

    /// What serde_json finds at the same places, as the scanner reports it.
    fn by_serde(text: &str) -> Option<(String, String, i64, u64, Option<String>)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let a = v.as_array().filter(|a| a.len() == 5)?;
        if a[3] != "postgres_changes" {
            return None;
        }
        let data = a[4].get("data")?;
        let record = data.get("record")?;
        Some((
            a[2].as_str()?.to_owned(),
            data.get("table")?.as_str()?.to_owned(),
            record.get("run")?.as_i64()?,
            record.get("n")?.as_u64()?,
            data.get("commit_timestamp")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ))
    }

    /// The scanner's raw strings, decoded as JSON would.
    fn decoded(d: Delivery<'_>) -> (String, String, i64, u64, Option<String>) {
        let s = |raw: &str| serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap();
        (
            s(d.topic),
            s(d.table),
            d.run,
            d.n,
            d.commit_timestamp.map(s),
        )
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            tricky_string().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Strings that look like the fields the scanner looks for, with escapes and non-ASCII,
    /// and longer ones that put quotes and escapes at every offset of the 8-byte steps.
    fn tricky_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,12}",
            "[ -~\t\né\u{7f}\u{1F600}]{8,40}",
            Just(r#""n":5,"run":6}"#.to_owned()),
            Just("postgres_changes".to_owned()),
            Just("tab\t\\\"é\u{1F600}\u{7}".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("n".to_owned()),
            Just("run".to_owned()),
            Just("table".to_owned()),
            Just("data".to_owned()),
            Just("record".to_owned()),
            "[a-z]{1,6}",
        ]
    }

    /// A field that is usually of the right type, sometimes missing or of another.
    fn maybe(v: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
        prop_oneof![8 => v.prop_map(Some), 1 => Just(None), 1 => any_json().prop_map(Some)].boxed()
    }

    prop_compose! {
        fn frame()(
            refs in (any::<Option<u16>>(), any::<Option<u16>>()),
            topic in tricky_string(),
            event in prop_oneof![4 => Just("postgres_changes".to_owned()), 1 => tricky_string()],
            table in maybe(prop_oneof![Just(json!("loadtest_events")), tricky_string().prop_map(Value::from)]),
            stamp in maybe(prop_oneof![Just(json!("2025-05-01T12:34:56.789Z")), Just(Value::Null)]),
            run in maybe(any::<i64>().prop_map(Value::from)),
            n in maybe(any::<u64>().prop_map(Value::from)),
            record_extra in prop::collection::btree_map(key(), any_json(), 0..4),
            data_extra in prop::collection::btree_map(key(), any_json(), 0..3),
            payload_extra in prop::collection::btree_map(key(), any_json(), 0..3),
            pretty in any::<bool>(),
        ) -> String {
            let mut record = serde_json::Map::new();
            record.extend(record_extra);
            if let Some(run) = run { record.insert("run".into(), run); }
            if let Some(n) = n { record.insert("n".into(), n); }
            let mut data = serde_json::Map::new();
            data.extend(data_extra);
            if let Some(table) = table { data.insert("table".into(), table); }
            if let Some(stamp) = stamp { data.insert("commit_timestamp".into(), stamp); }
            data.insert("record".into(), Value::Object(record));
            let mut payload = serde_json::Map::new();
            payload.extend(payload_extra);
            payload.insert("data".into(), Value::Object(data));
            let r = |r: Option<u16>| r.map_or(Value::Null, |r| Value::from(r.to_string()));
            let frame = json!([r(refs.0), r(refs.1), topic, event, payload]);
            if pretty {
                serde_json::to_string_pretty(&frame).unwrap()
            } else {
                frame.to_string()
            }
        }
    }

    proptest! {
        #[test]
        fn proptest_scanner_agrees_with_serde_json(text in frame()) {
            let scanned = delivery(text.as_bytes()).map(decoded);
            prop_assert_eq!(scanned, by_serde(&text));
        }

        /// Frames read again and again, in any order, through a memo small enough that they
        /// keep replacing each other: each gives what scanning it gives.
        #[test]
        fn proptest_the_memo_gives_what_a_scan_gives(
            frames in prop::collection::vec(frame(), 1..6),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..40),
            slots in prop_oneof![Just(1usize), Just(2), Just(8)],
        ) {
            let mut memo = Memo::new(slots);
            let mut colliding = Memo { hash: |_| 7, ..Memo::new(slots) };
            for i in order {
                let frame = frames[i.index(frames.len())].as_bytes();
                prop_assert_eq!(memo.find(frame), delivery(frame));
                prop_assert_eq!(colliding.find(frame), delivery(frame));
            }
        }

        #[test]
        fn proptest_scanner_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            std::hint::black_box(delivery(&bytes));
        }

        #[test]
        fn proptest_scanner_never_panics_on_cut_frames(text in frame(), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(text.len() + 1);
            std::hint::black_box(delivery(&text.as_bytes()[..cut]));
        }
    }
}
