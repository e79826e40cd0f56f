//! Locating the workspace's binaries (`tollgated`, `tollgate`, `lab-server`) from tests.

use std::{
    env,
    path::{Path, PathBuf},
};

/// Finds the executable of the workspace binary `name`.
///
/// Tries, in this order, and returns the first file that exists:
/// 1. The path in the environment variable `CARGO_BIN_EXE_<name>`, if it is set at run time.
/// 2. The directory of the running executable, or its parent if that directory is `deps`
///    (where cargo puts test binaries), so the profile of the running build is used.
/// 3. `$CARGO_TARGET_DIR/debug`. A relative `CARGO_TARGET_DIR` is taken relative to the
///    workspace root.
/// 4. `target/debug` under the workspace root.
///
/// Cargo builds the binaries of this crate before its own integration tests, but not the
/// binaries of other crates. The error names the paths tried.
pub fn workspace_binary(name: &str) -> Result<PathBuf, BinaryNotFoundError> {
    let searched = candidate_paths(name);
    match searched.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(BinaryNotFoundError {
            name: name.to_owned(),
            searched,
        }),
    }
}

/// A workspace binary that was not found in any of the searched places.
#[derive(Debug, thiserror::Error)]
#[error(
    "binary `{name}` not found (searched {searched:?}), build it with `cargo build --bin {name}`"
)]
pub struct BinaryNotFoundError {
    /// The binary name.
    pub name: String,
    /// The paths that were tried, in order.
    pub searched: Vec<PathBuf>,
}

fn candidate_paths(name: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();

    if let Some(path) = env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        paths.push(PathBuf::from(path));
    }

    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let dir = match dir.file_name() {
            Some(last) if last == "deps" => dir.parent().map(Path::to_path_buf).unwrap_or(dir),
            _ => dir,
        };
        paths.push(dir.join(name));
    }

    let workspace_root = workspace_root();
    if let Some(target_dir) = env::var_os("CARGO_TARGET_DIR") {
        paths.push(workspace_root.join(target_dir).join("debug").join(name));
    }
    paths.push(workspace_root.join("target").join("debug").join(name));

    paths
}

/// Returns the workspace root, the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_lists_searched_paths() {
        let err = workspace_binary("no-such-tollgate-binary").unwrap_err();

        assert_eq!(err.name, "no-such-tollgate-binary");
        assert!(
            err.searched
                .iter()
                .any(|path| path.ends_with("target/debug/no-such-tollgate-binary")),
            "searched paths {:?} miss target/debug",
            err.searched
        );
    }

    #[test]
    fn deps_directory_maps_to_profile_directory() {
        let paths = candidate_paths("lab-server");
        let exe = env::current_exe().unwrap();
        // Unit test binaries live in target/<profile>/deps.
        let profile_dir = exe.parent().unwrap().parent().unwrap();

        assert!(
            paths.contains(&profile_dir.join("lab-server")),
            "searched paths {paths:?} miss {}",
            profile_dir.display()
        );
    }
}
