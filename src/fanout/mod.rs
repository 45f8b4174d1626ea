//! Stage 3 of the data flow: which connections get which change.
//!
//! [`subscription`] turns a join's `postgres_changes` entries into validated subscriptions,
//! [`filter`] evaluates their row filters, and [`router`] indexes channels by table and pushes
//! each change's frame into the matching connections' queues.

pub mod filter;
pub mod router;
pub mod subscription;
