//! A child cgroup for a test's daemon and clients, below the cgroup2 mount, removed on drop.
//!
//! The daemon attaches its BPF programs to this cgroup instead of the cgroup2 root, so only
//! the test's own clients are attributed and nothing outside the test is touched.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

/// A cgroup directory the test created.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates the cgroup `name` directly below the cgroup2 mount.
    pub fn create(name: &str) -> io::Result<Self> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// Returns the cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `command` move its process into this cgroup between fork and exec, so every
    /// socket the program creates is attributed.
    pub fn enter(&self, command: &mut Command) -> io::Result<()> {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: the closure runs in the forked child before exec and only calls open(2),
        // write(2) and close(2), which are async-signal-safe, on memory it owns.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Writing "0" moves the writing process.
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written == 1 { Ok(()) } else { Err(error) }
            });
        }
        Ok(())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: move leftovers to the parent first.
        let parent_procs = self.path.with_file_name("cgroup.procs");
        for attempt in 0..50 {
            if let Ok(pids) = fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in pids.lines() {
                    // The process may have exited in between; that is fine.
                    let _ = fs::write(&parent_procs, pid);
                }
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                Err(err) if attempt == 49 => {
                    eprintln!("failed to remove cgroup {}: {err}", self.path.display());
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Returns the cgroup2 mount point from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // Fields after " - " are: filesystem type, source, super options.
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split_whitespace().next() == Some("cgroup2")
            && let Some(mount_point) = before.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mount_point));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup2 file system mounted (see /proc/self/mountinfo)",
    ))
}
