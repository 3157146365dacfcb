//! Atomic, durable file output: write to a temporary file in the destination's directory,
//! flush it to disk, rename it onto the destination, then flush the directory, so a reader
//! never sees a half-written checkpoint or result file, and after a crash or power loss
//! the file is either the old one or the complete new one.
//!
//! Outputs follow the umask like any other tool's: the temporary file is created with mode
//! 0666 (0644 under the usual umask 022), not the 0600 of a plain temporary file.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Prefix of the temporary files; a process killed mid-write leaves one behind
/// ([`remove_stale_temp_files`] clears them).
pub const TEMP_PREFIX: &str = ".lbwnet-tmp-";

/// The directory `path` lands in (created if missing), where its temporary file goes so
/// the final rename stays on one file system.
fn parent_dir(path: &Path) -> Result<&Path> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    Ok(dir)
}

/// A temporary-file builder whose files get mode 0666 minus the umask.
fn temp_builder<'a>() -> tempfile::Builder<'a, 'a> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Given to open(2) as its mode, so the process's umask applies.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
}

/// Flushes a directory's entries (renames, creations) to disk. Not every platform or file
/// system can open a directory for that; there it is skipped.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let handle = std::fs::File::open(dir)
            .with_context(|| format!("opening directory {} to flush it", dir.display()))?;
        handle
            .sync_all()
            .with_context(|| format!("flushing directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically, creating the parent directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes).map_err(Into::into))
}

/// Runs `fill` on a temporary file next to `path`, flushes it to disk, renames it onto
/// `path` and flushes the directory. When `fill` fails, nothing is left behind.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = parent_dir(path).with_context(|| format!("writing {}", path.display()))?;
    let mut tmp = temp_builder().tempfile_in(dir).with_context(|| {
        format!(
            "writing {}: creating a temporary file in {}",
            path.display(),
            dir.display()
        )
    })?;
    fill(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file_mut()
        .sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file onto {}", path.display()))?;
    sync_dir(dir)
}

/// Like [`write_atomic_with`] for outputs produced by a library that writes to a path
/// (libtorch's savers): `fill` gets the temporary path. The file is flushed to disk before
/// the rename, and the directory after it.
pub fn write_atomic_via_path(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path).with_context(|| format!("writing {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("tmp");
    let tmp = temp_builder()
        .suffix(&format!(".{ext}"))
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "writing {}: creating a temporary file in {}",
                path.display(),
                dir.display()
            )
        })?
        .into_temp_path();
    fill(&tmp).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file onto {}", path.display()))?;
    sync_dir(dir)
}

/// Removes the temporary files a killed process left in `dir` (not recursively); returns
/// how many. Only for directories no other process is writing into.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The one rule for a name from a data set, config or model file that becomes part of a
/// path (class names in comp4 file names, image ids, split names, run and sweep names):
/// `^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$`. It admits every VOC and COCO class name
/// ("traffic light" included) and no path separator, `.` or `..`, so such a name never
/// leads a path out of its directory.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || " _.+-".contains(c));
    if !(first_ok && rest_ok && name.len() <= 64) {
        anyhow::bail!(
            "`{}` is not allowed as a name: use 1 to 64 letters, digits, spaces and `_.+-`, starting with a letter or digit",
            name.escape_debug()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_atomically_and_stale_temp_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        write_atomic_via_path(&path, |tmp| {
            std::fs::write(tmp, b"three").map_err(Into::into)
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let failed = write_atomic_with(&path, |_| anyhow::bail!("no"));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let parent = path.parent().unwrap();
        std::fs::write(parent.join(format!("{TEMP_PREFIX}x")), b"").unwrap();
        assert_eq!(remove_stale_temp_files(parent).unwrap(), 1);
        let names: Vec<_> = std::fs::read_dir(parent).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(
            remove_stale_temp_files(&dir.path().join("none")).unwrap(),
            0
        );
    }

    #[test]
    fn the_name_rule_admits_class_names_and_no_path() {
        for ok in [
            "aeroplane",
            "traffic light",
            "potted_plant",
            "x+y-1.0",
            "000123",
            "a",
        ] {
            check_name(ok).unwrap();
        }
        let long = "a".repeat(65);
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", " a", ".hidden", "a\0b", "é", &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was admitted");
        }
    }
}
