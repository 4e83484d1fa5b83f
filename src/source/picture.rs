//! Pictures on disk, for a question asked once (`lookout ask`): one image file as a frame, or a clip of
//! image files and folders of them, taken in order a fixed interval apart, as a camera's clip buffer
//! would hold them. Decoded with the same limits as a camera's frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::decode;
use crate::message::{Clip, ClipFrame, Frame};

/// Why a picture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file or folder that cannot be read, or a file that is not an image.
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{0}: no PNG or JPEG files in this folder")]
    NoImages(PathBuf),
}

/// What is asked about: one frame, or a clip and the file of each of its frames.
pub enum Picture {
    Frame(Frame),
    Clip(Clip, Vec<PathBuf>),
}

impl Picture {
    /// One image file as a frame of the camera `cli`.
    pub fn image(path: &Path) -> Result<Picture, ReadError> {
        Ok(Picture::Frame(Frame {
            camera: Arc::from("cli"),
            seq: 1,
            captured_at: SystemTime::now(),
            capture_time: Duration::ZERO,
            image: read_image(path)?,
        }))
    }

    /// The image `files` as a clip, `interval_s` seconds apart (the first at 0).
    pub fn clip(files: Vec<PathBuf>, interval_s: f64) -> Result<Picture, ReadError> {
        let frames = files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                read_image(file).map(|image| ClipFrame {
                    image: Arc::new(image),
                    offset_s: index as f64 * interval_s,
                })
            })
            .collect::<Result<Vec<_>, ReadError>>()?;
        let duration_s = frames.len() as f64 * interval_s;
        Ok(Picture::Clip(Clip { frames, duration_s }, files))
    }
}

/// Reads and decodes an image file; the error names the file.
pub fn read_image(path: &Path) -> Result<image::RgbImage, ReadError> {
    std::fs::read(path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| decode::decode(&bytes).map_err(|error| error.to_string()))
        .map_err(|reason| ReadError::Unreadable {
            path: path.to_owned(),
            reason,
        })
}

/// The frame files of a clip: files as given, folders as their PNG and JPEG files in name order.
pub fn clip_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReadError> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|error| ReadError::Unreadable {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let mut images: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| file.is_file() && is_image_name(file))
            .collect();
        if images.is_empty() {
            return Err(ReadError::NoImages(path.clone()));
        }
        images.sort();
        files.extend(images);
    }
    Ok(files)
}

/// Whether a file's extension says PNG or JPEG, in any case.
fn is_image_name(file: &Path) -> bool {
    file.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ["png", "jpg", "jpeg"].contains(&ext.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, width: u32) {
        image::RgbImage::new(width, 2).save(path).unwrap();
    }

    #[test]
    fn a_clip_takes_files_as_given_and_folders_as_their_images_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("frames");
        std::fs::create_dir_all(folder.join("inner.png")).unwrap();
        for name in ["b.JPG", "a.png", "c.jpeg", "notes.txt", "d.gif"] {
            std::fs::write(folder.join(name), b"").unwrap();
        }
        let single = dir.path().join("first.webp");
        let files = clip_files(&[single.clone(), folder.clone()]).unwrap();
        assert_eq!(
            files,
            vec![
                single,
                folder.join("a.png"),
                folder.join("b.JPG"),
                folder.join("c.jpeg"),
            ]
        );
    }

    #[test]
    fn a_folder_without_images_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let error = clip_files(&[dir.path().to_owned()]).unwrap_err();
        assert!(matches!(&error, ReadError::NoImages(path) if path == dir.path()));
        assert_eq!(
            error.to_string(),
            format!(
                "{}: no PNG or JPEG files in this folder",
                dir.path().display()
            )
        );
    }

    #[test]
    fn a_clip_spaces_its_frames_by_the_interval_and_keeps_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (1..=3)
            .map(|width| {
                let file = dir.path().join(format!("{width}.png"));
                png(&file, width);
                file
            })
            .collect();
        let Picture::Clip(clip, kept) = Picture::clip(files.clone(), 0.5).unwrap() else {
            panic!("a clip was read as a single frame");
        };
        assert_eq!(kept, files);
        assert_eq!(clip.duration_s, 1.5);
        let frames: Vec<(u32, f64)> = clip
            .frames
            .iter()
            .map(|frame| (frame.image.width(), frame.offset_s))
            .collect();
        assert_eq!(frames, vec![(1, 0.0), (2, 0.5), (3, 1.0)]);
    }

    #[test]
    fn a_file_that_is_not_an_image_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("page.png");
        std::fs::write(&file, b"<html>not found</html>").unwrap();
        let Err(ReadError::Unreadable { path, .. }) = Picture::image(&file) else {
            panic!("an HTML page was read as an image");
        };
        assert_eq!(path, file);
        let missing = dir.path().join("missing.png");
        let error = read_image(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}: ", missing.display())),
            "{error}"
        );
    }
}
