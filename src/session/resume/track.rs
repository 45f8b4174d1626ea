//! A resumable connection's place in the change stream, per channel: what its writer wrote,
//! and what the client confirmed.
//!
//! A frame handed to the socket may still be lost with the connection (a phone leaving its
//! network, a laptop lid closing), so written is not received. The writer follows each batch
//! of change frames with a WebSocket ping carrying a number; the client's WebSocket answers it
//! with a pong (browsers and every client library do, without the application), and it answers
//! only after reading every frame before the ping. A pong therefore confirms the position the
//! writer had reached when it sent that ping. A close handshake the client completes confirms
//! everything written before the gateway's close frame. A resume starts from the confirmed
//! position: nothing written after it is counted as received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::position::{Position, Span, Spans, Stamp, THROUGH};

/// Pings waiting for their pong; an older one is forgotten when more are sent.
const MAX_PENDING: usize = 4;
/// A new ping is sent while one is unanswered only after this long.
const REPING_AFTER: Duration = Duration::from_millis(500);

/// Shared by the writer (stamps, pings), the reader (pongs) and the session's end.
#[derive(Debug)]
pub struct Track {
    spans: Arc<Spans>,
    state: Mutex<State>,
}

/// One channel's place: a span and the last outbox id of it handled ([`THROUGH`] for all).
#[derive(Debug, Clone)]
struct Mark {
    chan: u32,
    span: Arc<Span>,
    last_id: i64,
}

#[derive(Debug, Default)]
struct State {
    written: Vec<Mark>,
    /// Change frames written so far.
    written_frames: u64,
    confirmed: Vec<Mark>,
    /// `written_frames` when `confirmed` was taken.
    confirmed_frames: u64,
    pending: VecDeque<(u64, Vec<Mark>, u64, Instant)>,
    last_ping: u64,
    /// A span had left [`Spans`] before the writer reached it: positions are unknown.
    lost: bool,
}

impl State {
    fn set(&mut self, chan: u32, span: Arc<Span>, last_id: i64) {
        match self.written.iter_mut().find(|m| m.chan == chan) {
            Some(mark) => {
                mark.span = span;
                mark.last_id = last_id;
            }
            None => self.written.push(Mark {
                chan,
                span,
                last_id,
            }),
        }
    }

    /// With nothing unconfirmed written, what is written is confirmed.
    fn settle(&mut self) {
        if self.confirmed_frames == self.written_frames {
            self.confirmed.clone_from(&self.written);
        }
    }
}

impl Track {
    /// An empty track reading spans from `spans`.
    pub fn new(spans: Arc<Spans>) -> Track {
        Track {
            spans,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer wrote frames carrying `stamps`, in order (`frames` of them change frames,
    /// the rest markers); then, with its queue found empty after span `completed` was routed
    /// whole, every channel is at least through that span.
    pub fn wrote(&self, stamps: &[Stamp], frames: u64, completed: Option<u64>) {
        let mut state = self.state();
        let mut cached: Option<Arc<Span>> = None;
        for stamp in stamps {
            let span = match &cached {
                Some(span) if span.seq == stamp.seq => Arc::clone(span),
                _ => match self.spans.get(stamp.seq) {
                    Some(span) => {
                        cached = Some(Arc::clone(&span));
                        span
                    }
                    None => {
                        state.lost = true;
                        continue;
                    }
                },
            };
            state.set(stamp.chan, span, stamp.id);
        }
        state.written_frames += frames;
        if let Some(seq) = completed.filter(|&seq| seq > 0) {
            match self.spans.get(seq) {
                Some(span) => {
                    for mark in &mut state.written {
                        if mark.span.seq <= seq {
                            mark.span = Arc::clone(&span);
                            mark.last_id = THROUGH;
                        }
                    }
                }
                None => state.lost = true,
            }
        }
        state.settle();
    }

    /// The last span routed whole.
    pub fn completed(&self) -> u64 {
        self.spans.completed()
    }

    /// The number of a ping to send now, when change frames were written since the last
    /// confirmed one and no recent ping is unanswered.
    pub fn ping_due(&self) -> Option<u64> {
        let mut state = self.state();
        if state.written_frames == state.confirmed_frames {
            return None;
        }
        let waiting = state.pending.back().map(|p| (p.2, p.3));
        if let Some((frames, sent)) = waiting {
            if frames == state.written_frames || sent.elapsed() < REPING_AFTER {
                return None;
            }
        }
        state.last_ping += 1;
        let id = state.last_ping;
        if state.pending.len() == MAX_PENDING {
            state.pending.pop_front();
        }
        let written = state.written.clone();
        let frames = state.written_frames;
        state
            .pending
            .push_back((id, written, frames, Instant::now()));
        Some(id)
    }

    /// The client answered ping `id`: what was written before it is confirmed.
    pub fn pong(&self, id: u64) {
        let mut state = self.state();
        let Some(i) = state.pending.iter().position(|p| p.0 == id) else {
            return;
        };
        let Some((_, marks, frames, _)) = state.pending.drain(..=i).next_back() else {
            return;
        };
        if frames >= state.confirmed_frames {
            state.confirmed = marks;
            state.confirmed_frames = frames;
            state.settle();
        }
    }

    /// The client completed a close handshake: everything written is confirmed.
    pub fn confirm_all(&self) {
        let mut state = self.state();
        state.confirmed_frames = state.written_frames;
        state.settle();
    }

    /// The confirmed position of each channel, or `None` when it is unknown.
    pub fn positions(&self) -> Option<Vec<(u32, Position)>> {
        let state = self.state();
        if state.lost {
            return None;
        }
        Some(
            state
                .confirmed
                .iter()
                .map(|m| (m.chan, Position::within(&m.span, m.last_id)))
                .collect(),
        )
    }

    /// A channel left: it is no longer tracked.
    pub fn forget(&self, chan: u32) {
        let mut state = self.state();
        state.written.retain(|m| m.chan != chan);
        state.confirmed.retain(|m| m.chan != chan);
        for pending in &mut state.pending {
            pending.1.retain(|m| m.chan != chan);
        }
    }
}

/// The payload of ping `id`.
pub fn ping_payload(id: u64) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&id.to_be_bytes())
}

/// The ping number a pong answers, if it is one of ours.
pub fn pong_id(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Snapshot;

    fn snap(n: i64) -> Snapshot {
        Snapshot {
            xmax: (n + 100).to_string(),
            xip: vec![],
            max_id: n,
        }
    }

    fn setup() -> (Arc<Spans>, Track, Vec<Arc<Span>>) {
        let spans = Arc::new(Spans::default());
        let s: Vec<_> = (0..4)
            .map(|i| spans.begin(&snap(i), &snap(i + 1)))
            .collect();
        let track = Track::new(Arc::clone(&spans));
        (spans, track, s)
    }

    fn stamp(span: &Span, id: i64, chan: u32) -> Stamp {
        Stamp {
            seq: span.seq,
            id,
            chan,
        }
    }

    #[test]
    fn only_what_a_pong_answered_is_confirmed() {
        let (_, track, s) = setup();
        track.wrote(&[stamp(&s[0], THROUGH, 1)], 0, None);
        // A marker alone is confirmed at once: nothing the client could have read.
        assert_eq!(track.positions().unwrap(), vec![(1, Position::at(snap(1)))]);
        track.wrote(&[stamp(&s[1], 7, 1)], 1, None);
        let ping = track.ping_due().expect("a ping after frames");
        assert_eq!(track.ping_due(), None, "one unanswered ping at a time");
        track.wrote(&[stamp(&s[1], 9, 1)], 1, None);
        // Not answered yet: still where the marker was.
        assert_eq!(track.positions().unwrap()[0].1, Position::at(snap(1)));
        track.pong(ping);
        assert_eq!(track.positions().unwrap()[0].1, Position::within(&s[1], 7));
        track.confirm_all();
        assert_eq!(track.positions().unwrap()[0].1, Position::within(&s[1], 9));
    }

    #[test]
    fn an_empty_queue_after_a_whole_span_moves_every_channel() {
        let (_, track, s) = setup();
        track.wrote(
            &[stamp(&s[0], THROUGH, 1), stamp(&s[2], THROUGH, 2)],
            0,
            None,
        );
        track.wrote(&[], 0, Some(s[1].seq));
        let positions = track.positions().unwrap();
        assert_eq!(positions[0].1, Position::at(snap(2)), "moved to span 1");
        assert_eq!(positions[1].1, Position::at(snap(3)), "already past it");
        track.forget(1);
        assert_eq!(track.positions().unwrap().len(), 1);
    }

    #[test]
    fn a_span_gone_from_the_ring_makes_positions_unknown() {
        let (_, track, s) = setup();
        track.wrote(
            &[Stamp {
                seq: s[3].seq + 10,
                id: 1,
                chan: 1,
            }],
            1,
            None,
        );
        assert!(track.positions().is_none());
        assert_eq!(pong_id(&ping_payload(42)), Some(42));
        assert_eq!(pong_id(b"short"), None);
    }
}
