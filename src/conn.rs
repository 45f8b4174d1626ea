//! The identity of a connection within this node, shared by every stage that addresses one.
//!
//! The router, the broadcast hub, presence and the session table all key their entries by
//! [`ConnId`]; it lives in this leaf module so none of them has to import another for it.

/// Identifies a connection within this node (assigned in order, never reused while the
/// process runs).
pub type ConnId = u64;
