//! Tollgate's desktop interface, `tollgate-ui`: prompts, a live connection monitor and a rule
//! editor, talking to `tollgated` over its control socket.
//!
//! - [`app`] contains the whole state and its update function. It opens no window and no socket:
//!   each update returns the requests to send and the windows to open or close, so every flow
//!   is testable without a display or a daemon.
//! - [`prompt`], [`monitor`] and [`rules`] each hold one window's state and view.
//! - [`link`] connects to the daemon, reconnects when it restarts and keeps the lists fresh.
//! - [`shell`] runs it all with iced, one window per prompt; [`x11`] keeps new prompts from
//!   taking the keyboard focus.
//! - [`apps`] finds application names and icons; [`format`] turns numbers into text.

#![warn(missing_docs)]

pub mod app;
pub mod apps;
pub mod format;
pub mod link;
pub mod monitor;
pub mod prompt;
pub mod rules;
pub mod shell;
pub mod x11;
