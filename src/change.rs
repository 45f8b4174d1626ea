//! Boundary types of the data flow: what the capture stage hands on.
//!
//! A [`ChangeEvent`] is one captured row change, decoded (stage 2) and ready for the router
//! (stage 3); a [`BusMessage`] is a notification of the cluster bus that arrived on the node's
//! one listener connection, for the broadcast hub. This module imports no stage, so every
//! stage may import it without creating a cycle.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::pg::catalog::TableInfo;

/// Kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

impl Op {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    /// Parses the outbox's `op` column: the letter the capture writes (`I`, `U`, `D`), or the
    /// name rows captured before migration 0023 hold.
    pub fn parse(text: &str) -> Option<Op> {
        match text {
            "I" | "INSERT" => Some(Op::Insert),
            "U" | "UPDATE" => Some(Op::Update),
            "D" | "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A row as PostgreSQL rendered it: each column's name and its value's JSON text, exactly as
/// `jsonb`'s text output wrote it (every digit of a `numeric`, any depth of nesting), in the
/// order of the text. Delivery copies these bytes; nothing re-renders them.
pub type RawRow = Vec<(String, Box<RawValue>)>;

/// A decoded change, ready for routing.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// Outbox id (capture order).
    pub id: i64,
    /// The listener's read it came in (a span of `crate::position`; 0 outside a read).
    pub seq: u64,
    /// The table.
    pub table: Arc<TableInfo>,
    /// Operation.
    pub op: Op,
    /// The new row (INSERT, UPDATE), whole, for filtering.
    pub record: Option<Map<String, Value>>,
    /// The old row (UPDATE, DELETE), whole, for filtering: DELETE filters see the old row even
    /// where only its key is delivered.
    pub old_full: Option<Map<String, Value>>,
    /// `commit_timestamp` as sent.
    pub commit_timestamp: String,
    /// When the change was captured (in its transaction, before the commit): delivery latency
    /// is measured from it.
    pub captured_at: SystemTime,
    /// The new row as delivered (the bytes PostgreSQL wrote).
    pub record_raw: Option<RawRow>,
    /// The old row as delivered.
    pub old_raw: Option<RawRow>,
    /// Some column value could not be read into the filter view (`record`/`old_full`): a
    /// subscription with a filter cannot be evaluated and gets an error entry instead.
    pub filter_gap: bool,
    /// Why the change cannot be delivered at all: its subscribers get an error entry carrying
    /// this reason, with empty records.
    pub undeliverable: Option<String>,
}

impl ChangeEvent {
    /// The row filters are evaluated on: the old row for DELETE, the new row otherwise.
    pub fn filter_row(&self) -> Option<&Map<String, Value>> {
        match self.op {
            Op::Delete => self.old_full.as_ref(),
            Op::Insert | Op::Update => self.record.as_ref(),
        }
    }
}

/// What the listener forwards from LISTEN channels other than the capture bell (the cluster bus
/// of broadcast and presence shares the node's one listener connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// A notification on one of the bus channels.
    Notification {
        /// The channel.
        channel: String,
        /// Its payload.
        payload: String,
    },
    /// The listener connection was lost: notifications may have been missed since the last
    /// message; subscribers resynchronize from durable state.
    Gap,
}
