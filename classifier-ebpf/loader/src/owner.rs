//! The owner of a flow, converted from the kernel's record.

use std::{ffi::OsString, os::unix::ffi::OsStringExt as _, path::PathBuf, time::Duration};

use tollgate_classifier_common::{
    OWNER_EXE_COMPLETE, OWNER_EXE_TRUNCATED, OWNER_EXE_UNLINKED, OWNER_TASK_FIELDS, OwnerRecord,
};

/// The process that sent a flow's first packet, captured in the kernel at `connect()` or
/// `sendmsg()` time, so it stays known after the process exits.
///
/// Ids are those of the initial pid and user namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Process id (tgid).
    pub pid: u32,
    /// Id of the thread that called `connect()` or `sendmsg()`.
    pub tid: u32,
    /// Parent process id, or `None` if the kernel's struct offsets were not found.
    pub ppid: Option<u32>,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Name of the calling thread (`/proc/PID/task/TID/comm`), at most 15 bytes, decoded as
    /// UTF-8 with invalid bytes replaced.
    pub comm: String,
    /// Executable path as seen from the process's mount namespace, ignoring any `chroot`.
    /// `None` if the kernel's struct offsets were not found, the path did not fit in the
    /// kernel's record, the executable has no path (a memfd), or reading it failed.
    pub exe: Option<PathBuf>,
    /// Whether the executable was deleted or replaced after it was started. `exe` then names
    /// where it was.
    pub exe_unlinked: bool,
    /// Id of the process's cgroup2 cgroup (the inode number of its directory).
    pub cgroup_id: u64,
    /// Process start time since boot, including suspend, as in field 22 of
    /// `/proc/PID/stat`, or `None` if the kernel's struct offsets were not found. Together with
    /// `pid` it identifies the process even after its pid is reused.
    pub start_time: Option<Duration>,
}

impl Owner {
    /// Converts a record read from the flow map.
    pub(crate) fn from_record(record: &OwnerRecord) -> Self {
        let has_task_fields = record.flags & OWNER_TASK_FIELDS != 0;
        Self {
            pid: record.pid,
            tid: record.tid,
            ppid: has_task_fields.then_some(record.ppid),
            uid: record.uid,
            gid: record.gid,
            comm: comm(&record.comm),
            exe: exe_path(record),
            exe_unlinked: record.flags & OWNER_EXE_UNLINKED != 0,
            cgroup_id: record.cgroup_id,
            start_time: has_task_fields.then(|| Duration::from_nanos(record.start_time_ns)),
        }
    }
}

fn comm(bytes: &[u8]) -> String {
    let len = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// Joins the components the BPF program stored leaf first, if the walk reached the root.
fn exe_path(record: &OwnerRecord) -> Option<PathBuf> {
    let complete = record.flags & OWNER_EXE_COMPLETE != 0;
    if !complete || record.flags & OWNER_EXE_TRUNCATED != 0 {
        return None;
    }
    let stored = record.exe.get(..record.exe_len as usize)?;
    let components: Vec<&[u8]> = stored
        .split(|&byte| byte == 0)
        .filter(|component| !component.is_empty())
        .collect();
    if components.is_empty() {
        return None;
    }

    let mut path = Vec::with_capacity(stored.len() + 1);
    for component in components.iter().rev() {
        path.push(b'/');
        path.extend_from_slice(component);
    }
    Some(PathBuf::from(OsString::from_vec(path)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tollgate_classifier_common::EXE_BUF_LEN;

    use super::*;

    fn record(flags: u32, exe: &[u8]) -> OwnerRecord {
        let mut record = OwnerRecord {
            pid: 100,
            tid: 101,
            ppid: 1,
            uid: 1000,
            gid: 1001,
            flags,
            cgroup_id: 7,
            socket_cookie: 8,
            netns_cookie: 9,
            start_time_ns: 2_500_000_000,
            comm: [0; 16],
            exe_len: exe.len() as u32,
            padding: 0,
            exe: [0; EXE_BUF_LEN],
        };
        record.comm[..7].copy_from_slice(b"python3");
        record.exe[..exe.len()].copy_from_slice(exe);
        record
    }

    #[test]
    fn owner_joins_components_root_first() {
        let record = record(
            OWNER_TASK_FIELDS | OWNER_EXE_COMPLETE,
            b"python3.11\0bin\0usr\0",
        );

        let owner = Owner::from_record(&record);

        assert_eq!(owner.exe.as_deref(), Some(Path::new("/usr/bin/python3.11")));
        assert_eq!(owner.comm, "python3");
        assert_eq!(owner.pid, 100);
        assert_eq!(owner.tid, 101);
        assert_eq!(owner.ppid, Some(1));
        assert_eq!(owner.start_time, Some(Duration::from_millis(2500)));
        assert!(!owner.exe_unlinked);
    }

    #[test]
    fn owner_without_task_fields_has_no_ppid() {
        let owner = Owner::from_record(&record(OWNER_EXE_COMPLETE, b"sh\0bin\0"));

        assert_eq!(owner.ppid, None);
        assert_eq!(owner.start_time, None);
        assert_eq!(owner.exe.as_deref(), Some(Path::new("/bin/sh")));
    }

    #[test]
    fn incomplete_walk_has_no_exe() {
        let owner = Owner::from_record(&record(OWNER_EXE_UNLINKED, b"memfd:x\0"));

        assert_eq!(owner.exe, None);
        assert!(owner.exe_unlinked);
    }

    #[test]
    fn truncated_walk_has_no_exe() {
        let flags = OWNER_EXE_COMPLETE | OWNER_EXE_TRUNCATED;

        let owner = Owner::from_record(&record(flags, b"deep\0path\0"));

        assert_eq!(owner.exe, None);
    }

    #[test]
    fn exe_len_past_buffer_has_no_exe() {
        let mut record = record(OWNER_EXE_COMPLETE, b"sh\0bin\0");
        record.exe_len = EXE_BUF_LEN as u32 + 1;

        assert_eq!(Owner::from_record(&record).exe, None);
    }

    #[test]
    fn comm_replaces_invalid_utf8() {
        let mut record = record(0, b"");
        record.comm[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        record.comm[3..].fill(0);

        assert_eq!(Owner::from_record(&record).comm, "a\u{fffd}b");
    }
}
