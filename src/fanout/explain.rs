//! Answers from the delivery recorder ([`super::trace`]): who is subscribed to a table or a
//! topic on this node, and why each subscriber did or did not receive a kept change.
//!
//! Nothing is evaluated again: a subscriber's outcome is found by elimination from what the
//! router noted while it routed the change. Its queue refused the frame: `dropped`; its queue
//! took it: `delivered` (or `error_entry`); registered after the change, or gone before it:
//! `not_subscribed`; no subscription for the table and operation: `not_subscribed`; its claims'
//! row-level security decision (kept with the change) hid the row: `refused`; else none of its
//! filters matched: `filtered`, with the filters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use uuid::Uuid;

use super::router::{PgChannel, Router};
use super::subscription::{Events, PgSub};
use super::trace::Entry;
use super::visibility::Decision;
use crate::change::Op;
use crate::pg::catalog::TableInfo;

/// A channel registration, live or departed, as explanations see it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Registration number.
    pub reg: u64,
    /// The connection's id.
    pub connection_id: Uuid,
    /// This node's connection number.
    pub conn: crate::conn::ConnId,
    /// The topic, `realtime:<name>`.
    pub topic: Arc<str>,
    /// Its subscriptions (shared with its router entry and session while it is joined).
    pub subs: Arc<[PgSub]>,
    /// Its token's role and `sub`.
    pub role: Arc<str>,
    /// The `sub` claim.
    pub sub: Option<String>,
    claims_key: u64,
    claims_json: Arc<str>,
    /// Sequence number of the first change routed after it was registered.
    pub(super) since: u64,
    /// Sequence number of the first change routed after it left (`None`: still subscribed).
    pub until: Option<u64>,
    /// Frames queued to it.
    pub delivered: u64,
}

impl Subscriber {
    /// `channel` as explanations see it; `until`: when it left, if it did.
    pub(super) fn of(channel: &PgChannel, until: Option<u64>) -> Subscriber {
        Subscriber {
            reg: channel.tag.reg.load(Ordering::Relaxed),
            connection_id: channel.tag.connection_id,
            conn: channel.key.conn,
            topic: Arc::clone(&channel.key.topic),
            subs: Arc::clone(&channel.subs),
            role: Arc::clone(&channel.role),
            sub: channel.claims.sub.clone(),
            claims_key: channel.claims_key,
            claims_json: Arc::clone(&channel.claims_json),
            since: channel.tag.since.load(Ordering::Relaxed),
            until,
            delivered: channel.delivered(),
        }
    }

    /// The channel name (the topic without `realtime:`).
    pub fn name(&self) -> &str {
        crate::protocol::channel_name(&self.topic)
    }

    fn registered_at(&self, seq: u64) -> bool {
        self.since <= seq && self.until.is_none_or(|until| seq < until)
    }
}

/// The event a subscription wants, as the client wrote it (`*` for all).
pub fn event_name(events: Events) -> &'static str {
    match [Op::Insert, Op::Update, Op::Delete].map(|op| events.contains(op)) {
        [true, false, false] => "INSERT",
        [false, true, false] => "UPDATE",
        [false, false, true] => "DELETE",
        _ => "*",
    }
}

/// Why a subscriber did or did not receive a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its queue took the change.
    Delivered,
    /// Its queue took an error entry in place of the change.
    ErrorEntry,
    /// None of its subscriptions' filters matched the row.
    Filtered,
    /// Row-level security: its token's role may not see the row.
    Refused,
    /// Its queue refused the frame: it was full (a slow consumer, then closed) or closing.
    Dropped,
    /// It was not subscribed to this table and operation when the change was routed.
    NotSubscribed,
}

impl Outcome {
    /// The outcome's name in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::ErrorEntry => "error_entry",
            Outcome::Filtered => "filtered",
            Outcome::Refused => "refused",
            Outcome::Dropped => "dropped",
            Outcome::NotSubscribed => "not_subscribed",
        }
    }
}

/// One subscriber's answer for one change.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The subscriber.
    pub subscriber: Subscriber,
    /// What became of the change for it.
    pub outcome: Outcome,
    /// Why, for a person.
    pub detail: String,
    /// For `filtered`: the filters that did not match (each subscription covering the change).
    pub filters: Vec<String>,
}

/// Which subscribers an explanation is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// Only this connection.
    pub connection_id: Option<Uuid>,
    /// Only this channel (its name, without `realtime:`).
    pub channel: Option<&'a str>,
}

impl Who<'_> {
    fn admits(&self, s: &Subscriber) -> bool {
        self.connection_id.is_none_or(|c| c == s.connection_id)
            && self.channel.is_none_or(|c| c == s.name())
    }
}

impl Router {
    /// The channels now subscribed to `schema.table` (their `*` wildcards included), each
    /// once.
    pub fn subscribers(&self, schema: &str, table: &str) -> Vec<Subscriber> {
        let keys = [
            (schema.to_owned(), table.to_owned()),
            (schema.to_owned(), "*".to_owned()),
            ("*".to_owned(), "*".to_owned()),
        ];
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for key in &keys {
            let Some(map) = self.by_table.get(key).map(|m| Arc::clone(m.value())) else {
                continue;
            };
            for entry in map.iter() {
                if seen.insert(entry.key().clone()) {
                    out.push(Subscriber::of(entry.value(), None));
                }
            }
        }
        out
    }

    /// Calls `f` with each channel's topic and the change frames queued to it so far.
    pub fn for_each_channel(&self, mut f: impl FnMut(&str, u64)) {
        let mut seen = HashSet::new();
        for table in &self.by_table {
            for entry in table.value().iter() {
                if seen.insert(entry.key().clone()) {
                    f(&entry.key().topic, entry.value().delivered());
                }
            }
        }
    }

    /// The channels of topic `realtime:<name>` with Postgres Changes subscriptions.
    pub fn subscribers_of_topic(&self, name: &str) -> Vec<Subscriber> {
        let topic = format!("realtime:{name}");
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for table in &self.by_table {
            for entry in table.value().iter() {
                if *entry.key().topic == *topic && seen.insert(entry.key().clone()) {
                    out.push(Subscriber::of(entry.value(), None));
                }
            }
        }
        out
    }

    /// What became of change `id` for each subscriber `who` names: the channels subscribed to
    /// its table now, and those that left since and are remembered; for each connection and
    /// channel, the registration that was subscribed when the change was routed (else the
    /// newest). `None` when the change is not among the kept ones.
    pub fn explain(&self, id: i64, who: Who<'_>) -> Option<(Arc<Entry>, Vec<Explanation>)> {
        let entry = self.trace.find(id)?;
        let mut candidates = self.subscribers(&entry.table.schema, &entry.table.name);
        candidates.extend(
            self.trace
                .departed_subscribers()
                .into_iter()
                .filter(|s| s.subs.iter().any(|sub| covers_table(sub, &entry.table))),
        );
        let mut chosen: HashMap<(Uuid, crate::conn::ConnId, Arc<str>), Subscriber> = HashMap::new();
        for s in candidates.into_iter().filter(|s| who.admits(s)) {
            let key = (s.connection_id, s.conn, Arc::clone(&s.topic));
            let better = match chosen.get(&key) {
                None => true,
                Some(held) => {
                    let (now, then) = (s.registered_at(entry.seq), held.registered_at(entry.seq));
                    (now && !then) || (now == then && s.reg > held.reg)
                }
            };
            if better {
                chosen.insert(key, s);
            }
        }
        let mut out: Vec<Explanation> = chosen
            .into_values()
            .map(|s| explain_one(&entry, s))
            .collect();
        out.sort_by(|a, b| {
            (a.subscriber.connection_id, &a.subscriber.topic)
                .cmp(&(b.subscriber.connection_id, &b.subscriber.topic))
        });
        Some((entry, out))
    }
}

/// Whether `sub` is about `table`, whatever the event.
pub(super) fn covers_table(sub: &PgSub, table: &TableInfo) -> bool {
    (sub.schema == "*" || sub.schema == table.schema)
        && (sub.table == "*" || sub.table == table.name)
}

fn explain_one(entry: &Entry, subscriber: Subscriber) -> Explanation {
    let verdict = |outcome, detail: String| (outcome, detail, Vec::new());
    let s = &subscriber;
    let (outcome, detail, filters) = if entry.seq < s.since {
        verdict(
            Outcome::NotSubscribed,
            "the channel subscribed after this change was routed".to_owned(),
        )
    } else if s.until.is_some_and(|until| entry.seq >= until) {
        verdict(
            Outcome::NotSubscribed,
            "the channel had left (or re-subscribed) before this change was routed".to_owned(),
        )
    } else if entry.dropped.binary_search(&s.reg).is_ok() {
        verdict(
            Outcome::Dropped,
            "its connection's queue refused the frame: full (a slow consumer, closed with 4001) \
             or already closing"
                .to_owned(),
        )
    } else if entry.got.binary_search(&s.reg).is_ok() {
        verdict(Outcome::Delivered, "queued to its connection".to_owned())
    } else if entry.errors.binary_search(&s.reg).is_ok() {
        let why = entry.undeliverable.clone().unwrap_or_else(|| {
            "the change or its filter could not be evaluated for it (see errors in the entry)"
                .to_owned()
        });
        verdict(
            Outcome::ErrorEntry,
            format!("an error entry was queued: {why}"),
        )
    } else {
        unreached(entry, s)
    };
    Explanation {
        subscriber,
        outcome,
        detail,
        filters,
    }
}

/// Why a subscriber registered at the time got no frame: not subscribed to the operation,
/// hidden by row-level security, or filtered out.
fn unreached(entry: &Entry, s: &Subscriber) -> (Outcome, String, Vec<String>) {
    let covering: Vec<&PgSub> = s
        .subs
        .iter()
        .filter(|sub| covers_table(sub, &entry.table) && sub.events.contains(entry.op))
        .collect();
    if covering.is_empty() {
        return (
            Outcome::NotSubscribed,
            format!(
                "no subscription of the channel covers {} on {}.{}",
                entry.op.as_str(),
                entry.table.schema,
                entry.table.name
            ),
            Vec::new(),
        );
    }
    let decision = entry.sight.decide(s.claims_key, &s.claims_json, &s.role);
    match decision {
        Decision::Hide => (
            Outcome::Refused,
            format!(
                "row-level security: the role {} may not see this row (its table privileges or \
                 SELECT policies, evaluated with the channel token's claims)",
                s.role
            ),
            Vec::new(),
        ),
        Decision::Error | Decision::Show { .. } => {
            let filters: Vec<String> = covering
                .iter()
                .filter_map(|sub| sub.filter_text.clone())
                .collect();
            let hidden_column = match decision {
                Decision::Show {
                    columns: Some(allowed),
                    ..
                } => covering.iter().any(|sub| {
                    sub.filter
                        .as_ref()
                        .is_some_and(|f| f.columns().any(|c| !allowed.iter().any(|a| a == c)))
                }),
                _ => false,
            };
            let detail = if hidden_column {
                "its filter tests a column the role may not select, so it matches nothing"
            } else {
                "the row did not match its filters"
            };
            (Outcome::Filtered, detail.to_owned(), filters)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::Claims;
    use crate::change::ChangeEvent;
    use crate::fanout::filter::{Column, Filter};
    use crate::fanout::router::{ChannelKey, Wakes};
    use crate::fanout::trace::Counts;
    use crate::fanout::visibility::Sight;
    use crate::outbound::{self, Frame, Kind, Limits, Receiver};
    use crate::pg::catalog::{ColumnInfo, TableInfo};
    use crate::protocol::Vsn;
    use std::time::SystemTime;
    use tokio_util::sync::CancellationToken;

    pub(crate) fn change(id: i64) -> ChangeEvent {
        let table = Arc::new(TableInfo {
            relid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![ColumnInfo {
                name: "id".into(),
                type_name: "int4".into(),
            }],
            primary_key: vec!["id".into()],
            replica_identity_full: false,
            rls_enabled: false,
        });
        let record = serde_json::json!({"id": 1});
        ChangeEvent {
            id,
            seq: 0,
            table,
            op: Op::Insert,
            record: record.as_object().cloned(),
            old_full: None,
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
            captured_at: SystemTime::UNIX_EPOCH,
            record_raw: Some(vec![(
                "id".into(),
                serde_json::value::RawValue::from_string("1".into()).unwrap(),
            )]),
            old_raw: None,
            filter_gap: false,
            undeliverable: None,
        }
    }

    pub(crate) fn sub(event: &str, filter: Option<&str>) -> PgSub {
        PgSub {
            id: 7,
            events: Events::parse(Some(event)),
            schema: "public".into(),
            table: "items".into(),
            filter: filter.map(|f| {
                Filter::parse(f)
                    .unwrap()
                    .bind(&[Column::new("id", "int4")])
                    .unwrap()
            }),
            filter_text: filter.map(str::to_owned),
            select: None,
        }
    }

    /// Subscribes a channel of connection `conn` with queue bound `frames`.
    pub(crate) fn join(
        router: &Router,
        conn: u64,
        name: &str,
        subs: Vec<PgSub>,
        frames: usize,
    ) -> Receiver {
        let limits = Limits {
            max_frames: frames,
            max_bytes: 1 << 16,
        };
        let (tx, rx) = outbound::channel(limits, CancellationToken::new());
        if frames == 1 {
            // A queue that is full before the change comes.
            tx.push(Frame::text(Kind::System, "x")).unwrap();
        }
        let key = ChannelKey {
            conn,
            topic: Arc::from(format!("realtime:{name}")),
        };
        let claims = Arc::new(Claims::new("anon", 0, None, Default::default()));
        let channel = PgChannel::new(key, tx, Vsn::V2, subs, claims)
            .for_connection(Uuid::from_u128(u128::from(conn)));
        router.subscribe(Arc::new(channel));
        rx
    }

    fn outcomes(router: &Router, id: i64) -> Vec<(String, Outcome)> {
        let (_, explained) = router.explain(id, Who::default()).expect("kept");
        explained
            .into_iter()
            .map(|e| (e.subscriber.name().to_owned(), e.outcome))
            .collect()
    }

    /// Guards the elimination: a frame queued is "delivered", a refused one "dropped", a filter
    /// that did not match "filtered" (with its text), another event or a later subscription
    /// "not_subscribed"; a channel that left is still answered for; the counts agree.
    #[test]
    fn every_subscriber_gets_its_outcome() {
        let router = Router::new();
        let _a = join(&router, 1, "all", vec![sub("*", None)], 8);
        let _f = join(&router, 2, "filtered", vec![sub("*", Some("id=eq.2"))], 8);
        let _d = join(&router, 3, "deletes", vec![sub("DELETE", None)], 8);
        let _full = join(&router, 4, "full", vec![sub("*", None)], 1);
        let mut wakes = Wakes::default();
        router.route(&change(10), Sight::everything(), 1 << 20, &mut wakes);
        let _late = join(&router, 5, "late", vec![sub("*", None)], 8);
        assert_eq!(
            outcomes(&router, 10),
            [
                ("all".to_owned(), Outcome::Delivered),
                ("filtered".to_owned(), Outcome::Filtered),
                ("deletes".to_owned(), Outcome::NotSubscribed),
                ("full".to_owned(), Outcome::Dropped),
                ("late".to_owned(), Outcome::NotSubscribed),
            ]
        );
        let (entry, explained) = router.explain(10, Who::default()).unwrap();
        assert_eq!(explained[1].filters, ["id=eq.2"]);
        assert_eq!(
            entry.counts,
            Counts {
                subscribers: 4,
                delivered: 1,
                error_entries: 0,
                filtered: 2,
                refused: 0,
                dropped: 1,
            }
        );
        // The channel that got it leaves: still answered for, and no longer subscribed.
        router.unsubscribe(&ChannelKey {
            conn: 1,
            topic: Arc::from("realtime:all"),
        });
        let who = Who {
            connection_id: Some(Uuid::from_u128(1)),
            channel: Some("all"),
        };
        let (_, explained) = router.explain(10, who).unwrap();
        assert_eq!(explained.len(), 1);
        assert_eq!(explained[0].outcome, Outcome::Delivered);
        assert!(explained[0].subscriber.until.is_some());
        router.route(&change(11), Sight::everything(), 1 << 20, &mut wakes);
        let (_, explained) = router.explain(11, who).unwrap();
        assert_eq!(explained.len(), 1);
        assert_eq!(explained[0].outcome, Outcome::NotSubscribed, "it had left");
        assert!(router.explain(99, Who::default()).is_none());
        let trail = router.trace.trail("public", "items").unwrap();
        assert_eq!(trail.changes, 2);
        assert_eq!(trail.recent[0].id, 11);
    }
}
