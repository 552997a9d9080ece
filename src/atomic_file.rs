//! Replacing a file so that readers see the old content or the new, never
//! half of it, and a crash leaves one of the two: the rendered templates
//! and the Consul state file are written this way.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary file beside `path` (same directory, so the
/// rename never crosses file systems), syncs it, gives it `mode` when set,
/// renames it over `path`, then syncs the directory so the rename lasts.
/// Creates the directory when missing.
pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(dir, path);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Best effort: some file systems refuse to sync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `.<name>.<pid>.tmp` beside the file: hidden, and distinct for two
/// processes writing into one directory.
fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().to_string());
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}
