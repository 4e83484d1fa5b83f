//! Turning encoded bytes (JPEG, PNG, GIF) into RGB pixels without trusting them.
//!
//! A file of a few hundred bytes can claim to be 60000x60000 pixels and ask for gigabytes when decoded
//! (a decompression bomb). The decoder's limits reject such images from their header, before any pixel
//! buffer exists. Transparent pixels are composited onto white, as the model's reference preprocessing
//! does, so every stage downstream can assume plain RGB. An animated GIF gives its first frame: a camera
//! snapshot endpoint that serves GIFs serves a picture, and the first frame is that picture.
//!
//! Errors tell a format this build does not read (WebP, BMP...) apart from a damaged file, and are one
//! line each: some JPEG decoder messages end in a newline, which split a log line in two.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// The longest side accepted: wide enough for panoramas, far below bomb territory.
pub(crate) const MAX_SIDE: u32 = 32_768;
/// The most memory one decode may allocate (an 8K RGBA frame needs about 130 MiB).
pub(crate) const MAX_ALLOC_BYTES: u64 = 256 * 1024 * 1024;

/// Why bytes did not become a picture.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty image data")]
    Empty,
    #[error("not a supported image format (JPEG, PNG or GIF)")]
    UnknownFormat,
    #[error("the image format {0} is not supported (JPEG, PNG or GIF)")]
    Unsupported(String),
    #[error(
        "image is {width}x{height}, over the limit of {MAX_SIDE} pixels a side or {MAX_ALLOC_BYTES} bytes"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` under the limits above and returns RGB pixels.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| DecodeError::Corrupt(one_line(&error.to_string())))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    // The header is read without limits, so that an oversized image is reported with the size it claims;
    // the limits then apply to the pixel decode itself.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|error| match error {
        image::ImageError::Unsupported(unsupported) => {
            DecodeError::Unsupported(unsupported.format_hint().to_string())
        }
        other => DecodeError::Corrupt(one_line(&other.to_string())),
    })?;
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE || decoder.total_bytes() > MAX_ALLOC_BYTES {
        return Err(DecodeError::TooLarge { width, height });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);
    decoder
        .set_limits(limits)
        .map_err(|_| DecodeError::TooLarge { width, height })?;
    let image = DynamicImage::from_decoder(decoder).map_err(|error| match error {
        image::ImageError::Limits(_) => DecodeError::TooLarge { width, height },
        image::ImageError::Unsupported(unsupported) => {
            DecodeError::Unsupported(unsupported.format_hint().to_string())
        }
        other => DecodeError::Corrupt(one_line(&other.to_string())),
    })?;
    Ok(to_rgb_on_white(image))
}

/// A decoder's message on one line: the JPEG decoder ends some of its messages in a newline, shown
/// escaped (`\n`) inside its quoted text or raw.
fn one_line(message: &str) -> String {
    message
        .replace("\\n\"", "\"")
        .replace("\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// RGB pixels; transparency is composited onto white.
pub(crate) fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white = |channel: u8| {
            let alpha = u32::from(a);
            ((u32::from(channel) * alpha + 255 * (255 - alpha) + 127) / 255) as u8
        };
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageFormat;

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn decodes_jpeg_and_png() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 6, image::Rgb([10, 200, 30])));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let decoded = decode(&encode(image.clone(), format)).unwrap();
            assert_eq!(decoded.dimensions(), (8, 6));
        }
    }

    #[test]
    fn transparency_becomes_white() {
        let mut rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 255]));
        let decoded = decode(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)).unwrap();
        assert_eq!(decoded.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(decoded.get_pixel(1, 0).0, [0, 0, 0]);
    }

    #[test]
    fn rejects_empty_text_and_truncated_data() {
        assert!(matches!(decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"hello, I am text"),
            Err(DecodeError::UnknownFormat)
        ));
        let jpeg = encode(
            DynamicImage::ImageRgb8(RgbImage::new(64, 64)),
            ImageFormat::Jpeg,
        );
        assert!(matches!(
            decode(&jpeg[..jpeg.len() / 2]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn an_animated_gif_gives_its_first_frame() {
        let frame = |rgba: [u8; 4]| {
            image::Frame::new(image::RgbaImage::from_pixel(8, 6, image::Rgba(rgba)))
        };
        let mut gif = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
            encoder
                .encode_frames([frame([200, 0, 0, 255]), frame([0, 0, 200, 255])])
                .unwrap();
        }
        let decoded = decode(&gif).unwrap();
        assert_eq!(decoded.dimensions(), (8, 6));
        let [r, g, b] = decoded.get_pixel(3, 3).0;
        assert!(r > 150 && g < 50 && b < 50, "{:?}", [r, g, b]);
    }

    #[test]
    fn a_format_this_build_does_not_read_is_unsupported_not_corrupt() {
        let webp = b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0\x30\x01\0\x9d\x01\x2a\x01\0\x01\0";
        let error = decode(webp).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the image format WebP is not supported (JPEG, PNG or GIF)"
        );
    }

    #[test]
    fn a_jpeg_error_is_one_line() {
        let jpeg = encode(
            DynamicImage::ImageRgb8(RgbImage::new(16, 16)),
            ImageFormat::Jpeg,
        );
        // An APP0 segment claiming a length of 1, which the decoder reports with a trailing newline.
        let damaged = [&jpeg[..2], &[0xff, 0xe0, 0x00, 0x01], &jpeg[2..]].concat();
        let error = decode(&damaged).unwrap_err().to_string();
        assert!(error.starts_with("corrupt image: "), "{error}");
        assert!(!error.contains('\n') && !error.contains("\\n"), "{error:?}");
    }

    #[test]
    fn rejects_a_png_claiming_60000_by_60000_before_allocating() {
        let bomb = png_header_claiming(60_000, 60_000);
        assert!(matches!(
            decode(&bomb),
            Err(DecodeError::TooLarge {
                width: 60_000,
                height: 60_000
            })
        ));
    }

    /// A small PNG whose header claims the given size: an IHDR chunk, then a few bytes of pixel data.
    pub(crate) fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        // zlib: a stored block of five zero bytes.
        chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x01, 0x01, 0x05, 0x00, 0xfa, 0xff, 0, 0, 0, 0, 0],
        );
        chunk(&mut png, b"IEND", &[]);
        png
    }

    fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
