//! Stages 1 and 2 of the data flow: capture.
//!
//! Writers' triggers put every change of a published table into the outbox
//! (`realtime.changes`); the [`listener`] reads it in commit order (one LISTEN connection per
//! node), [`decode`] turns each row into a [`ChangeEvent`](crate::change::ChangeEvent), and the
//! listener hands it to the router ([`crate::fanout`], stage 3). Notifications of the cluster
//! bus arriving on the same connection go to the broadcast hub as
//! [`BusMessage`](crate::change::BusMessage)s. [`maintenance`] keeps the capture triggers in step
//! with the publication and prunes the outbox; `schedule` decides when the listener reads, and
//! `bell` rests the bell while it reads at its sustained pace.
//! The design and its cost to writers are in docs/capture.md.

mod bell;
pub mod decode;
pub mod listener;
pub mod maintenance;
pub mod outbox;
pub mod resume;
mod schedule;
