//! The facts about a connection that rules match on.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{Protocol, name::canonical_name, subject::Sha256Digest};

/// An outbound connection to decide on, borrowed from the caller's data.
///
/// Every fact about the process is optional: a missing fact fails every rule condition on it,
/// and only conditions that are unset match regardless. Host names must be in canonical form
/// (lowercase, no trailing dot); [`ConnectionFacts`] produces them so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// Executable of the connecting process.
    pub executable: Option<&'a Path>,
    /// SHA-256 digest of the executable file.
    pub sha256: Option<&'a Sha256Digest>,
    /// User id of the process.
    pub uid: Option<u32>,
    /// User name of that uid.
    pub user: Option<&'a str>,
    /// Command line: the arguments joined with single spaces.
    pub command_line: Option<&'a str>,
    /// Script run by an interpreter process.
    pub script: Option<&'a Path>,
    /// Executable of the parent process.
    pub parent_executable: Option<&'a Path>,
    /// Host names of the destination: the name the program looked up, then each CNAME target.
    pub hosts: &'a [String],
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl<'a> Connection<'a> {
    /// Creates a connection from an unknown process with no host names.
    pub fn to(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            executable: None,
            sha256: None,
            uid: None,
            user: None,
            command_line: None,
            script: None,
            parent_executable: None,
            hosts: &[],
            ip,
            port,
            protocol,
        }
    }
}

/// The facts of a connection as owned data, for the control protocol and for tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionFacts {
    /// Executable of the connecting process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<PathBuf>,
    /// SHA-256 digest of the executable file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// User id of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// User name of that uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Command line: the arguments joined with single spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// Script run by an interpreter process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// Executable of the parent process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_executable: Option<PathBuf>,
    /// Host names of the destination, first the name looked up, then each CNAME target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl ConnectionFacts {
    /// Creates the facts of a connection from an unknown process with no host names.
    pub fn to(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            executable: None,
            sha256: None,
            uid: None,
            user: None,
            command_line: None,
            script: None,
            parent_executable: None,
            hosts: Vec::new(),
            ip,
            port,
            protocol,
        }
    }

    /// Puts the host names in canonical form: lowercase, without a trailing dot.
    pub fn canonicalize(&mut self) {
        for host in &mut self.hosts {
            *host = canonical_name(host);
        }
    }

    /// Returns the facts as a [`Connection`] for matching.
    pub fn as_connection(&self) -> Connection<'_> {
        Connection {
            executable: self.executable.as_deref(),
            sha256: self.sha256.as_ref(),
            uid: self.uid,
            user: self.user.as_deref(),
            command_line: self.command_line.as_deref(),
            script: self.script.as_deref(),
            parent_executable: self.parent_executable.as_deref(),
            hosts: &self.hosts,
            ip: self.ip,
            port: self.port,
            protocol: self.protocol,
        }
    }
}
