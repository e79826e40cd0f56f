//! Discovery of the cgroup2 mount point.

use std::{ffi::OsString, fs, os::unix::ffi::OsStringExt as _, path::PathBuf};

use crate::ClassifierError;

/// Returns the mount point of the cgroup2 hierarchy's root, read from `/proc/self/mountinfo`.
///
/// This is `/sys/fs/cgroup` on hosts with only cgroup2 and often `/sys/fs/cgroup/unified` on
/// hybrid hosts. A mount of a cgroup below the root (its root field is not `/`) is skipped.
/// Inside a cgroup namespace the root is the namespace's own cgroup.
pub fn cgroup2_root() -> Result<PathBuf, ClassifierError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(ClassifierError::ReadMountInfo)?;
    cgroup2_mount_point(&mountinfo).ok_or(ClassifierError::Cgroup2NotMounted)
}

/// Returns the first cgroup2 mount of the hierarchy root listed in `mountinfo`.
fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        // Fields: id, parent id, major:minor, root, mount point, options, optional fields,
        // "-", file system type, source, super options.
        let Some((mount, filesystem)) = line.split_once(" - ") else {
            continue;
        };
        if filesystem.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let mut fields = mount.split(' ').skip(3);
        let (Some(root), Some(mount_point)) = (fields.next(), fields.next()) else {
            continue;
        };
        if root == "/" {
            return Some(PathBuf::from(unescape_octal(mount_point)));
        }
    }
    None
}

/// Decodes the `\ooo` octal escapes the kernel writes for spaces, tabs, newlines and
/// backslashes in mountinfo paths.
fn unescape_octal(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                // Three octal digits can exceed 255, and such a sequence is kept as it is.
                match u8::try_from(value) {
                    Ok(byte) => decoded.push(byte),
                    Err(_) => decoded.extend_from_slice(&bytes[index..index + 4]),
                }
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    OsString::from_vec(decoded)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 33 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
42 33 0:39 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
";

    #[test]
    fn mount_point_found_on_hybrid_host() {
        let mount_point = cgroup2_mount_point(HYBRID);

        assert_eq!(
            mount_point.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn mount_point_skips_non_root_cgroup_mount() {
        let mountinfo = "\
50 40 0:38 /user.slice /run/sub rw shared:1 - cgroup2 cgroup2 rw
51 40 0:38 / /sys/fs/cgroup rw shared:2 - cgroup2 cgroup2 rw
";

        let mount_point = cgroup2_mount_point(mountinfo);

        assert_eq!(mount_point.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn mount_point_missing_without_cgroup2() {
        let mountinfo = "42 33 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";

        assert_eq!(cgroup2_mount_point(mountinfo), None);
    }

    #[test]
    fn mount_point_decodes_escaped_space() {
        let mountinfo = "51 40 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";

        let mount_point = cgroup2_mount_point(mountinfo);

        assert_eq!(mount_point.as_deref(), Some(Path::new("/mnt/with space")));
    }

    #[test]
    fn unescape_keeps_lone_backslash() {
        assert_eq!(unescape_octal("a\\b\\12"), OsString::from("a\\b\\12"));
    }
}
