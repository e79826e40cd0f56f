//! Fills the [`OwnerRecord`] of a socket from the task that calls `connect()` or `sendmsg()`.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_probe_read_kernel as bpf_probe_read_kernel_buf,
            bpf_probe_read_kernel_str,
        },
    },
};
use tollgate_classifier_common::{
    Counter, EXE_BUF_LEN, EXE_COMPONENT_MAX, EXE_OFFSET_LIMIT, EXE_WALK_STEPS, KernelOffsets,
    OFFSETS_EXE_PATH, OFFSETS_EXE_UNLINKED, OFFSETS_TASK, OWNER_EXE_COMPLETE, OWNER_EXE_TRUNCATED,
    OWNER_EXE_UNLINKED, OWNER_TASK_FIELDS, OwnerRecord,
};

use crate::maps::{EMPTY_OWNER, KERNEL_OFFSETS, SOCKET_OWNER, count};

/// Records the current task as the owner of the socket behind `ctx`, a `bpf_sock_addr`
/// context.
///
/// A socket whose record already names the current process keeps it, so an unconnected UDP
/// socket pays for the path walk only on its first datagram. A socket handed to another
/// process gets a new record.
///
/// NOTE: a socket that stays open across `execve()` keeps the record of the program that first
/// used it, because the pid does not change.
#[inline(always)]
pub fn record_socket_owner(ctx: *mut c_void) -> RecordedSocket {
    // SAFETY: `ctx` is the program's own context pointer, which both helpers take.
    let (cookie, netns_cookie) = unsafe { (bpf_get_socket_cookie(ctx), bpf_get_netns_cookie(ctx)) };
    let mut recorded = RecordedSocket {
        cookie,
        netns_cookie,
        owner: core::ptr::null(),
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;

    let record = match SOCKET_OWNER.get_ptr_mut(cookie) {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
        Some(existing) if unsafe { (*existing).pid } == pid => {
            recorded.owner = existing;
            return recorded;
        }
        Some(existing) => {
            clear_exe(existing);
            existing
        }
        None => match insert_empty_record(cookie) {
            Some(record) => record,
            None => return recorded,
        },
    };
    recorded.owner = record;
    // SAFETY: `record` points to this socket's map value. Only programs running for this
    // socket write it, and they run in the socket owner's syscalls.
    let record = unsafe { &mut *record };

    record.pid = pid;
    record.tid = pid_tgid as u32;
    let uid_gid = bpf_get_current_uid_gid();
    record.uid = uid_gid as u32;
    record.gid = (uid_gid >> 32) as u32;
    record.flags = 0;
    // SAFETY: the helper has no preconditions in a task context.
    record.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    record.socket_cookie = cookie;
    record.netns_cookie = netns_cookie;
    record.start_time_ns = 0;
    record.comm = bpf_get_current_comm().unwrap_or_default();
    record.exe_len = 0;

    fill_from_task(record);
    count(Counter::SocketRecorded);
    recorded
}

/// The socket of a `connect()` or `sendmsg()` and its owner record.
///
/// Every field is always set, `owner` to null when no record could be stored: an `Option` would
/// carry uninitialized bytes in its `None`, which the verifier rejects when LLVM moves them.
pub struct RecordedSocket {
    pub cookie: u64,
    pub netns_cookie: u64,
    pub owner: *const OwnerRecord,
}

/// Zeroes the executable path of a record about to be filled again, so that its bytes past the
/// new path's end are zero, as the fast path's comparison of whole records needs.
#[inline(always)]
fn clear_exe(record: *mut OwnerRecord) {
    let Some(empty) = EMPTY_OWNER.get_ptr(0) else {
        return;
    };
    // SAFETY: both pointers come from successful map lookups and point to records whose `exe`
    // is EXE_BUF_LEN bytes long. The helper copies the all-zero path over the old one.
    unsafe {
        bpf_probe_read_kernel_buf(
            (&raw mut (*record).exe).cast(),
            EXE_BUF_LEN as u32,
            (&raw const (*empty).exe).cast(),
        );
    }
}

/// Inserts an all-zero record for `cookie` and returns a pointer to the map's copy.
#[inline(always)]
fn insert_empty_record(cookie: u64) -> Option<*mut OwnerRecord> {
    let empty = EMPTY_OWNER.get_ptr(0)?;
    // SAFETY: the pointer comes from a successful lookup in an array that neither the programs
    // nor user space write.
    let empty: &OwnerRecord = unsafe { &*empty };
    // Passing the reference, not the value, keeps the record off the 512-byte BPF stack.
    if SOCKET_OWNER.insert(cookie, empty, 0).is_err() {
        count(Counter::SocketUpdateFailed);
        return None;
    }
    SOCKET_OWNER.get_ptr_mut(cookie)
}

/// Fills the fields that need kernel struct offsets, as far as the loader found them.
#[inline(always)]
fn fill_from_task(record: &mut OwnerRecord) {
    let Some(offsets) = KERNEL_OFFSETS.get(0) else {
        return;
    };
    // SAFETY: the helper has no preconditions, and the result is only used as an address for
    // `bpf_probe_read_kernel`, which checks it.
    let task = unsafe { bpf_get_current_task() };

    if offsets.flags & OFFSETS_TASK != 0 && fill_task_fields(record, task, offsets).is_some() {
        record.flags |= OWNER_TASK_FIELDS;
    }
    if offsets.flags & OFFSETS_EXE_PATH != 0 {
        fill_exe_path(record, task, offsets);
    }
}

/// Reads the parent's pid and the process start time.
#[inline(always)]
fn fill_task_fields(record: &mut OwnerRecord, task: u64, offsets: &KernelOffsets) -> Option<()> {
    let parent = read_pointer(task + u64::from(offsets.task_real_parent))?;
    record.ppid = read_kernel::<u32>(parent + u64::from(offsets.task_tgid))?;
    let leader = read_pointer(task + u64::from(offsets.task_group_leader))?;
    record.start_time_ns = read_kernel::<u64>(leader + u64::from(offsets.task_start_boottime))?;
    Some(())
}

/// Walks `task->mm->exe_file->f_path` up to the root of the task's mount namespace and stores
/// the components in `record.exe`, leaf first, as `d_path()` would visit them.
///
/// The flags tell user space whether the path is whole: [`OWNER_EXE_COMPLETE`] only when the
/// walk reached the namespace root. A `chroot` is not taken into account.
#[inline(always)]
fn fill_exe_path(record: &mut OwnerRecord, task: u64, offsets: &KernelOffsets) -> Option<()> {
    let mm = read_pointer(task + u64::from(offsets.task_mm))?;
    let file = read_pointer(mm + u64::from(offsets.mm_exe_file))?;
    let path = file + u64::from(offsets.file_f_path);
    let mut dentry = read_pointer(path + u64::from(offsets.path_dentry))?;
    let vfsmount = read_pointer(path + u64::from(offsets.path_mnt))?;
    // `struct mount` embeds the `vfsmount` at `mount_mnt` (the kernel's `real_mount()`).
    let mut mount = vfsmount - u64::from(offsets.mount_mnt);

    if offsets.flags & OFFSETS_EXE_UNLINKED != 0 {
        let pprev = read_kernel::<u64>(dentry + u64::from(offsets.dentry_d_hash_pprev))?;
        if pprev == 0 {
            record.flags |= OWNER_EXE_UNLINKED;
        }
    }

    let mut len: u32 = 0;
    for _ in 0..EXE_WALK_STEPS {
        let mount_root =
            read_pointer(mount + u64::from(offsets.mount_mnt + offsets.vfsmount_mnt_root))?;
        if dentry == mount_root {
            // At the root of this mount: continue from the mount point in the parent mount,
            // or stop at the namespace root, whose parent is itself.
            let parent_mount = read_pointer(mount + u64::from(offsets.mount_mnt_parent))?;
            if parent_mount == mount {
                record.exe_len = len;
                record.flags |= OWNER_EXE_COMPLETE;
                return Some(());
            }
            dentry = read_pointer(mount + u64::from(offsets.mount_mnt_mountpoint))?;
            mount = parent_mount;
            continue;
        }

        // A dentry that is its own parent without being a mount root belongs to no reachable
        // path (a memfd or another pseudo file): the walk stops without `OWNER_EXE_COMPLETE`.
        let parent = read_pointer(dentry + u64::from(offsets.dentry_d_parent))?;
        if parent == dentry {
            record.exe_len = len;
            return Some(());
        }
        if len >= EXE_OFFSET_LIMIT {
            break;
        }
        let name = read_pointer(dentry + u64::from(offsets.dentry_d_name_name))?;
        // The mask is a no-op after the check above, but it gives the verifier its bound on
        // the offset, so the write of up to EXE_COMPONENT_MAX bytes stays inside `exe`. The
        // volatile read stops LLVM from dropping the mask as redundant.
        // SAFETY: `len` is a live local variable.
        let offset = (unsafe { core::ptr::read_volatile(&len) } & (EXE_OFFSET_LIMIT - 1)) as usize;
        // SAFETY: `offset < EXE_OFFSET_LIMIT` and `EXE_OFFSET_LIMIT + EXE_COMPONENT_MAX` equals
        // the length of `exe`, so the helper writes inside the record.
        let copied = unsafe {
            bpf_probe_read_kernel_str(
                record.exe.as_mut_ptr().add(offset).cast(),
                EXE_COMPONENT_MAX,
                name as *const c_void,
            )
        };
        if copied <= 0 {
            return None;
        }
        len += copied as u32;
        dentry = parent;
    }

    record.exe_len = len;
    record.flags |= OWNER_EXE_TRUNCATED;
    count(Counter::ExePathTruncated);
    Some(())
}

/// Reads a kernel pointer at `address`, returning `None` if the read fails or it is null.
#[inline(always)]
fn read_pointer(address: u64) -> Option<u64> {
    read_kernel::<u64>(address).filter(|&pointer| pointer != 0)
}

/// Reads a `T` from kernel memory at `address`.
#[inline(always)]
fn read_kernel<T>(address: u64) -> Option<T> {
    // SAFETY: `bpf_probe_read_kernel` checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}
