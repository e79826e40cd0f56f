//! Kernel struct offsets for the BPF programs, found in the running kernel's BTF.

use tollgate_classifier_common::{
    KernelOffsets, OFFSETS_EXE_PATH, OFFSETS_EXE_UNLINKED, OFFSETS_TASK,
};
use tracing::{debug, warn};

use crate::btf::{Btf, BtfError, FieldKind};

/// Returns the offsets of the running kernel, with a flag set for each group that was found.
///
/// A group that is missing leaves its fields zero and its flag clear, so the programs skip the
/// reads that depend on it. The reason is logged.
pub(crate) fn running_kernel_offsets() -> KernelOffsets {
    match Btf::from_sys_fs() {
        Ok(btf) => offsets_from_btf(&btf),
        Err(error) => {
            warn!(
                %error,
                "kernel BTF unavailable, so owners have no executable path or parent pid"
            );
            KernelOffsets::default()
        }
    }
}

/// Returns the offsets described by `btf`.
pub(crate) fn offsets_from_btf(btf: &Btf) -> KernelOffsets {
    let mut offsets = KernelOffsets::default();

    match task_offsets(btf, &offsets) {
        Ok(found) => {
            offsets = found;
            offsets.flags |= OFFSETS_TASK;
        }
        Err(error) => {
            warn!(%error, "task offsets not found, so owners have no parent pid or start time");
        }
    }
    match exe_path_offsets(btf, &offsets) {
        Ok(found) => {
            offsets = found;
            offsets.flags |= OFFSETS_EXE_PATH;
        }
        Err(error) => warn!(%error, "path offsets not found, so owners have no executable path"),
    }
    if offsets.flags & OFFSETS_EXE_PATH != 0 {
        match btf.field_offset("dentry", &["d_hash", "pprev"], FieldKind::Pointer) {
            Ok(offset) => {
                offsets.dentry_d_hash_pprev = offset;
                offsets.flags |= OFFSETS_EXE_UNLINKED;
            }
            Err(error) => {
                debug!(
                    %error,
                    "dentry hash offset not found, so unlinked executables are not marked"
                );
            }
        }
    }
    offsets
}

fn task_offsets(btf: &Btf, base: &KernelOffsets) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_real_parent: btf.field_offset("task_struct", &["real_parent"], FieldKind::Pointer)?,
        task_group_leader: btf.field_offset(
            "task_struct",
            &["group_leader"],
            FieldKind::Pointer,
        )?,
        task_tgid: btf.field_offset("task_struct", &["tgid"], FieldKind::Integer(4))?,
        task_start_boottime: btf.field_offset(
            "task_struct",
            &["start_boottime"],
            FieldKind::Integer(8),
        )?,
        ..*base
    })
}

fn exe_path_offsets(btf: &Btf, base: &KernelOffsets) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_mm: btf.field_offset("task_struct", &["mm"], FieldKind::Pointer)?,
        mm_exe_file: btf.field_offset("mm_struct", &["exe_file"], FieldKind::Pointer)?,
        file_f_path: btf.field_offset("file", &["f_path"], FieldKind::Struct)?,
        path_mnt: btf.field_offset("path", &["mnt"], FieldKind::Pointer)?,
        path_dentry: btf.field_offset("path", &["dentry"], FieldKind::Pointer)?,
        dentry_d_parent: btf.field_offset("dentry", &["d_parent"], FieldKind::Pointer)?,
        dentry_d_name_name: btf.field_offset("dentry", &["d_name", "name"], FieldKind::Pointer)?,
        vfsmount_mnt_root: btf.field_offset("vfsmount", &["mnt_root"], FieldKind::Pointer)?,
        mount_mnt: btf.field_offset("mount", &["mnt"], FieldKind::Struct)?,
        mount_mnt_parent: btf.field_offset("mount", &["mnt_parent"], FieldKind::Pointer)?,
        mount_mnt_mountpoint: btf.field_offset("mount", &["mnt_mountpoint"], FieldKind::Pointer)?,
        ..*base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns BTF with a header, no types and an empty string table.
    fn empty_btf() -> Btf {
        let mut data = Vec::new();
        data.extend_from_slice(&0xeb9f_u16.to_ne_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [24_u32, 0, 0, 0, 1] {
            data.extend_from_slice(&word.to_ne_bytes());
        }
        data.push(0);
        Btf::parse(data).expect("empty BTF parses")
    }

    #[test]
    fn missing_structs_leave_flags_clear() {
        let offsets = offsets_from_btf(&empty_btf());

        assert_eq!(offsets, KernelOffsets::default());
    }
}
