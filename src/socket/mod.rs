//! The WebSocket connection itself: the handshake, server frames encoded once, and the two halves
//! of an upgraded connection.
//!
//! - [`frame`] (a leaf): a server frame's bytes, header included, built once per payload by
//!   whoever builds the payload (fan-out, the broadcast hub, the session's replies) and shared
//!   by every recipient.
//! - [`upgrade`]: the handshake, and the split of the connection. The read half goes to
//!   tungstenite, which parses and unmasks the client's frames; the write half goes to the
//!   [`Outlet`], which writes the shared frames with vectored writes, never copying them into
//!   a per-socket buffer.
//! - [`inbound`]: the reader's stream.

pub mod frame;
pub mod inbound;
pub mod outlet;
pub mod upgrade;

pub use outlet::Outlet;
pub use upgrade::{Reader, Socket, Upgrade};
