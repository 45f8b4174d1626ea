//! The WebSocket connection itself: the handshake, server frames encoded once, and the two halves
//! of an upgraded connection.
//!
//! - [`frame`] (a leaf): a server frame's bytes, header included, built once per payload by
//!   whoever builds the payload (fan-out, the broadcast hub, the session's replies) and shared
//!   by every recipient; its header reader ([`frame::header`]) reads the client's frames too.
//! - [`upgrade`]: the handshake, and the split of the connection. The read half goes to the
//!   [`Reader`]; the write half goes to the [`Outlet`], which writes the shared frames with
//!   vectored writes, never copying them into a per-socket buffer.
//! - [`decode`]: the client's frames checked, unmasked and put together into messages, without
//!   I/O; what breaks the protocol fails the connection with its close code (1002, 1007,
//!   1009).
//! - [`inbound`]: the [`Reader`]: reads into a buffer on the stack of each poll and decodes
//!   before returning, so that an idle connection holds no read buffer. It writes nothing:
//!   the session answers pings and close frames itself, through the outlet.

pub mod decode;
pub mod frame;
pub mod inbound;
pub mod outlet;
pub mod upgrade;

pub use decode::{Failure, Limits, Message};
pub use inbound::Reader;
pub use outlet::Outlet;
pub use upgrade::{Socket, Upgrade};
