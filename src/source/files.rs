//! Frames from an image file or a folder of images: for demos, tests and cameras that drop snapshots
//! into a directory. The folder is listed when the source starts (sorted by name, so playback order is
//! predictable) and listed again at each loop, so files added while running are picked up.

use std::path::{Path, PathBuf};

use super::{FrameSource, SourceError, SourceFuture, decode};

pub struct FilesSource {
    root: PathBuf,
    looping: bool,
    queue: std::vec::IntoIter<PathBuf>,
}

impl FilesSource {
    pub fn new(root: &Path, looping: bool) -> Result<FilesSource, SourceError> {
        let queue = list(root)?.into_iter();
        Ok(FilesSource {
            root: root.to_owned(),
            looping,
            queue,
        })
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
            let path = match self.queue.next() {
                Some(path) => path,
                None if self.looping => {
                    self.queue = list(&self.root)?.into_iter();
                    self.queue.next().ok_or_else(|| {
                        SourceError::Unavailable(format!("{} holds no files", self.root.display()))
                    })?
                }
                None => return Err(SourceError::Exhausted),
            };
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
