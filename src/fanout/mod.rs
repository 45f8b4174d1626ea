//! Stage 3 of the data flow: which connections get which change.
//!
//! [`subscription`] turns a join's `postgres_changes` entries into validated subscriptions,
//! [`filter`] evaluates their row filters, [`router`] indexes channels by table and pushes
//! each change's frame into the matching connections' queues, and [`encode`] writes a change's
//! delivery body (column selection included) once for all of them. [`visibility`] asks the
//! database, once per page of changes, which subscribers' claims may see which row
//! (row-level security), and the router delivers accordingly; [`table_sight`] holds what the
//! outbox read already answered about whole tables, which spares those claim sets the check.
//! [`trace`] keeps the last changes
//! of each table and what became of them, and [`explain`] answers from them, for delivery
//! diagnostics.

pub mod encode;
pub mod explain;
pub mod filter;
pub mod router;
pub mod subscription;
pub mod table_sight;
pub mod trace;
pub mod visibility;
