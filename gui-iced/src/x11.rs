//! Keeps new prompt windows from taking the keyboard focus on X11.
//!
//! The Extended Window Manager Hints define that a window mapped with `_NET_WM_USER_TIME` set to
//! 0 should not be given the focus when it appears. Prompt windows are created hidden, get
//! that property here, and only then are shown.

use x11rb::{
    connection::Connection as _,
    errors::{ConnectError, ConnectionError, ReplyError},
    protocol::xproto::{AtomEnum, ConnectionExt as _, PropMode},
    wrapper::ConnectionExt as _,
};

/// Errors setting the property.
#[derive(Debug, thiserror::Error)]
pub enum FocusHintError {
    /// The X server could not be reached.
    #[error("failed to connect to the X server")]
    Connect(#[from] ConnectError),
    /// A request failed.
    #[error("failed to send a request to the X server")]
    Connection(#[from] ConnectionError),
    /// The X server rejected a request.
    #[error("the X server rejected a request")]
    Reply(#[from] ReplyError),
}

/// Sets `_NET_WM_USER_TIME` to 0 on X window `window`, which must not be mapped yet, and waits
/// until the X server has applied it.
pub fn forbid_initial_focus(window: u32) -> Result<(), FocusHintError> {
    let (connection, _) = x11rb::connect(None)?;
    let atom = connection
        .intern_atom(false, b"_NET_WM_USER_TIME")?
        .reply()?
        .atom;
    connection
        .change_property32(PropMode::REPLACE, window, atom, AtomEnum::CARDINAL, &[0])?
        .check()?;
    connection.flush()?;
    Ok(())
}
