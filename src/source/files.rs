//! Frames from an image file or a folder of images: for demos, tests and cameras that drop snapshots
//! into a directory. The folder is listed on the first frame (sorted by name, so playback order is
//! predictable) and again at each loop, so files added while running are picked up; a folder that is
//! missing or empty is `Unavailable` and retried with backoff like any other source.

use std::path::{Path, PathBuf};

use super::{FrameSource, SourceError, SourceFuture, decode};

pub(crate) struct FilesSource {
    root: PathBuf,
    looping: bool,
    /// Files still to play in this pass; `None` before the first listing.
    queue: Option<std::vec::IntoIter<PathBuf>>,
}

impl FilesSource {
    pub fn new(root: &Path, looping: bool) -> FilesSource {
        FilesSource {
            root: root.to_owned(),
            looping,
            queue: None,
        }
    }

    /// The next file to play, listing the folder again when a pass is due.
    fn next_path(&mut self) -> Result<PathBuf, SourceError> {
        if let Some(path) = self.queue.as_mut().and_then(Iterator::next) {
            return Ok(path);
        }
        if self.queue.is_some() && !self.looping {
            return Err(SourceError::Exhausted);
        }
        let mut files = list(&self.root)?.into_iter();
        let first = files.next().ok_or_else(|| {
            SourceError::Unavailable(format!("{} holds no files", self.root.display()))
        })?;
        self.queue = Some(files);
        Ok(first)
    }
}

/// The files to play: the path itself, or the regular files of a folder sorted by name.
fn list(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let unavailable =
        |error: std::io::Error| SourceError::Unavailable(format!("{}: {error}", root.display()));
    if !root.is_dir() {
        std::fs::metadata(root).map_err(unavailable)?;
        return Ok(vec![root.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(unavailable)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

impl FrameSource for FilesSource {
    fn next_image(&mut self) -> SourceFuture<'_> {
        Box::pin(async move {
            let path = self.next_path()?;
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|error| SourceError::BadFrame(format!("{}: {error}", path.display())))?;
            // Decoding is CPU work of up to tens of milliseconds: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                decode::decode(&bytes)
                    .map_err(|error| SourceError::BadFrame(format!("{}: {error}", path.display())))
            })
            .await
            .map_err(|error| SourceError::BadFrame(format!("decoder failed: {error}")))?
        })
    }
}
