//! Frame sources under bad input: a folder of broken files, an HTTP snapshot server that misbehaves in
//! every way the issue lists (a real HTTP server on loopback), and a camera that is not there. Each bad
//! input is a counted skip or a retried error, and the capture loop keeps running.

use std::sync::Arc;
use std::time::Duration;

use lookout::source::{self, CameraConfig, SourceConfig};

use lookout::message::Frame;
use lookout::stats::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Running {
    frames: watch::Receiver<Option<Arc<Frame>>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn capture(source: SourceConfig) -> Running {
    let (sender, frames) = watch::channel(None);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let config = CameraConfig {
        id: "cam".into(),
        source,
    };
    let task = tokio::spawn(source::run(config, sender, stats.clone(), stop.clone()));
    Running {
        frames,
        stats,
        stop,
        task,
    }
}

impl Running {
    /// Stops the loop and checks it ends promptly (no hang in a retry or a read).
    async fn stop(self) -> Arc<Stats> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("capture stops at once")
            .unwrap();
        self.stats
    }
}

fn png(level: u8) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 8, image::Rgb([level, level, level]))
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

fn jpeg() -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]))
        .write_to(&mut bytes, image::ImageFormat::Jpeg)
        .unwrap();
    bytes.into_inner()
}

/// An animated GIF of two 24x18 frames (red, then blue): the first is the picture.
fn animated_gif() -> Vec<u8> {
    let frame =
        |rgba: [u8; 4]| image::Frame::new(image::RgbaImage::from_pixel(24, 18, image::Rgba(rgba)));
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode_frames([frame([200, 0, 0, 255]), frame([0, 0, 200, 255])])
        .unwrap();
    gif
}

/// A PNG whose header claims 60000x60000 pixels (about 10 GB decoded), in 60 bytes.
fn png_bomb() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        png.extend_from_slice(&body);
        let mut crc = 0xFFFF_FFFFu32;
        for byte in &body {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        png.extend_from_slice(&(!crc).to_be_bytes());
    };
    chunk(
        b"IHDR",
        &[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60, 8, 2, 0, 0, 0],
    );
    chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x05, 0x00, 0xfa, 0xff, 0, 0, 0, 0, 0],
    );
    chunk(b"IEND", &[]);
    png
}

#[tokio::test]
async fn a_folder_of_broken_files_yields_the_good_frames_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let good = jpeg();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("01-good.png", png(10)),
        ("02-corrupt.jpg", good[..good.len() / 3].to_vec()),
        ("03-empty.jpg", Vec::new()),
        ("04-bomb.png", png_bomb()),
        (
            "05-text.jpg",
            b"this is a text file, not a picture".to_vec(),
        ),
        ("06-good.jpg", good),
        ("07-animated.gif", animated_gif()),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let mut running = capture(SourceConfig::Files {
        path: dir.path().into(),
        fps: 50.0,
        looping: false,
    });
    let mut sizes = Vec::new();
    let mut last_pixel = None;
    while running.frames.changed().await.is_ok() {
        if let Some(frame) = running.frames.borrow_and_update().clone() {
            sizes.push((frame.seq, frame.image.dimensions()));
            last_pixel = Some(frame.image.get_pixel(5, 5).0);
        }
    }
    // The source ran out (no looping) and closed its channel; every bad file was skipped and counted,
    // and the animated GIF gave its first frame.
    assert_eq!(sizes.last(), Some(&(3, (24, 18))), "{sizes:?}");
    let [r, g, b] = last_pixel.unwrap();
    assert!(r > 150 && g < 50 && b < 50, "{:?}", [r, g, b]);
    let stats = running.stop().await;
    assert_eq!(stats.frames_captured.get(), 3);
    assert_eq!(stats.frames_bad.get(), 4);
}

#[tokio::test]
async fn a_looping_folder_plays_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), png(1)).unwrap();
    std::fs::write(dir.path().join("b.png"), png(2)).unwrap();
    let mut running = capture(SourceConfig::Files {
        path: dir.path().into(),
        fps: 100.0,
        looping: true,
    });
    let mut seen = 0;
    while seen < 6 {
        running.frames.changed().await.unwrap();
        seen += 1;
    }
    let stats = running.stop().await;
    assert!(stats.frames_captured.get() >= 6);
}

/// A loopback HTTP server playing a snapshot camera that misbehaves by path.
async fn snapshot_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let read = socket.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..read]).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let respond = |status: &str, content_type: &str, body: &[u8]| {
                    let mut response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(body);
                    response
                };
                let response = match path.as_str() {
                    "/ok" => respond("200 OK", "image/jpeg", &jpeg()),
                    "/auth"
                        if request
                            .to_ascii_lowercase()
                            .contains("authorization: bearer s3cret") =>
                    {
                        respond("200 OK", "image/jpeg", &jpeg())
                    }
                    "/auth" => respond("401 Unauthorized", "text/plain", b"no"),
                    "/error" => respond("500 Internal Server Error", "text/plain", b"broken"),
                    "/html" => respond("200 OK", "text/html", b"<html><body>login</body></html>"),
                    "/huge" => {
                        // Claims nothing, streams a gigabyte of zeros until the client hangs up.
                        let head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n";
                        if socket.write_all(head).await.is_err() {
                            return;
                        }
                        let chunk = vec![0u8; 1 << 20];
                        for _ in 0..1024 {
                            if socket.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    "/hang" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    _ => respond("404 Not Found", "text/plain", b"?"),
                };
                let _ = socket.write_all(&response).await;
            });
        }
    });
    format!("http://{address}")
}

async fn first_frame(running: &mut Running) {
    tokio::time::timeout(Duration::from_secs(5), running.frames.changed())
        .await
        .unwrap_or_else(|_| panic!("no frame within 5 s: {:?}", running.stats.snapshot()))
        .unwrap();
}

fn http(base: &str, path: &str) -> SourceConfig {
    SourceConfig::Http {
        url: format!("{base}{path}"),
        interval_secs: 0.05,
        timeout_secs: 0.5,
        auth: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_snapshots_survive_every_kind_of_bad_server() {
    let base = snapshot_server().await;

    let mut ok = capture(http(&base, "/ok"));
    first_frame(&mut ok).await;
    assert_eq!(
        ok.frames.borrow().as_ref().unwrap().image.dimensions(),
        (40, 30)
    );
    ok.stop().await;

    let auth: SourceConfig = toml::from_str::<CameraConfig>(&format!(
        "id = \"cam\"\nsource = {{ kind = \"http\", url = \"{base}/auth\", interval_secs = 0.05, auth = {{ bearer = \"s3cret\" }} }}"
    ))
    .unwrap()
    .source;
    let mut authed = capture(auth);
    first_frame(&mut authed).await;
    authed.stop().await;

    // Each fault: no frame, the right counter moves (within a deadline: a loaded machine reads the
    // gigabyte slowly), and the loop is still running when stopped.
    for (path, bad_frames) in [
        ("/error", false),
        ("/html", true),
        ("/huge", true),
        ("/hang", false),
        ("/auth", false),
    ] {
        let running = capture(http(&base, path));
        let counted = |stats: &Stats| {
            if bad_frames {
                stats.frames_bad.get() >= 1
            } else {
                stats.source_errors.get() >= 1
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !counted(&running.stats) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: not counted as a {} within 20 s: {:?}",
                if bad_frames {
                    "bad frame"
                } else {
                    "source error"
                },
                running.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !running.task.is_finished(),
            "{path}: the capture loop ended"
        );
        let stats = running.stop().await;
        assert_eq!(stats.frames_captured.get(), 0, "{path}");
    }
}

#[tokio::test]
async fn a_missing_camera_is_retried_with_backoff_until_shutdown() {
    let source = toml::from_str::<CameraConfig>(
        "id = \"cam\"\nsource = { kind = \"camera\", device = 0, fps = 50.0 }",
    )
    .unwrap()
    .source;
    let running = capture(source);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.task.is_finished());
    let stats = running.stop().await;
    let attempts = stats.source_errors.get();
    // At 50 fps without backoff this would be ~75 attempts; backoff (0.5 s doubling) allows a handful.
    assert!((1..=10).contains(&attempts), "{attempts} attempts in 1.5 s");
}
