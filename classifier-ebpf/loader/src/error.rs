//! The error type of the loader.

use std::{io, path::PathBuf};

use aya::{EbpfError, maps::MapError, programs::ProgramError};

/// An error while loading, attaching or reading the classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The crate was compiled with `AYA_BUILD_SKIP=1`, so it embeds no BPF object.
    #[error("no BPF object embedded: this build set AYA_BUILD_SKIP; rebuild without it")]
    ObjectNotBuilt,
    /// The kernel or aya rejected the BPF object.
    #[error("failed to load the BPF object")]
    LoadObject(#[source] EbpfError),
    /// The object has no map of that name.
    #[error("map {name} not found in the BPF object")]
    MapNotFound {
        /// Name of the map.
        name: &'static str,
    },
    /// A map could not be opened, read or written.
    #[error("failed to access map {name}")]
    Map {
        /// Name of the map.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// The object has no program of that name.
    #[error("program {name} not found in the BPF object")]
    ProgramNotFound {
        /// Name of the program.
        name: &'static str,
    },
    /// The verifier rejected a program, or the object has a program of the wrong type.
    #[error("failed to load program {name}")]
    LoadProgram {
        /// Name of the program.
        name: &'static str,
        /// The underlying error, which includes the verifier log.
        #[source]
        source: ProgramError,
    },
    /// A program could not be attached to the cgroup.
    #[error("failed to attach program {name} to cgroup {}", path.display())]
    AttachProgram {
        /// Name of the program.
        name: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ProgramError,
    },
    /// The cgroup directory could not be opened.
    #[error("failed to open cgroup {}", path.display())]
    OpenCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/mountinfo` could not be read.
    #[error("failed to read /proc/self/mountinfo")]
    ReadMountInfo(#[source] io::Error),
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system mounted; mount one with `mount -t cgroup2 none DIR`")]
    Cgroup2NotMounted,
}
