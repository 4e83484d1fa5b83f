//! Writing a small file so that a crash or power cut leaves either the old content or the new one,
//! never a mix: a temporary file beside it, synced, renamed over it, and the folder synced so the
//! rename itself survives. For files replaced whole (a model manifest, the pushed config layer, a
//! dataset image).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically, creating its folder if needed. On an error the temporary
/// file may remain (`temporary(path)`).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let temporary = temporary(path);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(folder)?.sync_all()
}

/// The temporary file `write` fills before renaming it to `path`.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}
