//! The SMTP submission front end (RFC 5321, RFC 6409).
//!
//! - [`command`], [`data`], [`sasl`], [`reply`]: PURE parsing and replies;
//! - [`session`]: the state machine; it talks to auth, intake and limits only
//!   through the traits and types of [`ports`] (its whole world); every
//!   refusal becomes a reply in [`reply`];
//! - [`config`]: the `[smtp]` section; [`proxy`]: PROXY v1/v2 headers (PURE);
//! - [`server`]: the only inbound socket code (listeners, caps, TLS, timeouts).

pub mod budget;
pub mod command;
pub mod config;
pub mod data;
pub mod ports;
pub mod proxy;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod session;
