//! Clip tasks end to end against a real mosquitto: a camera at a high frame rate and resolution feeds its
//! clip buffer for several seconds; answers about clips say which frames they used (and, at first, that
//! there were fewer than asked for), the buffer's memory in the stats stays flat at its bound, and an
//! escalated clip answer goes to a loopback cloud as the clip's frames, at most the endpoint's cap.

use crate::common;

use std::time::{Duration, Instant};

use common::cloud::{CloudServer, Reply};
use common::{Daemon, Mosquitto, Subscriber, Toml};

/// 512x512 RGB: what the buffer keeps of every frame, whatever the camera's resolution.
const FRAME_BYTES: u64 = 512 * 512 * 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_answers_name_their_frames_and_the_buffer_stays_flat() {
    let broker = Mosquitto::start();
    // Slow enough that some answers find it busy and go out local (the task's others wait for it).
    let cloud = CloudServer::start(
        vec![],
        Reply::answer("yes").after(Duration::from_millis(300)),
    )
    .await;
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/clipbox/cam/recent/answer", "lookout/clipbox/stats"],
    )
    .await;
    let config = Toml::device("clipbox")
        .key("shutdown_timeout_secs", "5.0")
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.5)
        .camera("cam", 1280, 720, 30.0)
        .task("recent", "cam", "Did anything move?")
        .kind("yes_no")
        .interval(0.5)
        .clip(2.0, 4)
        .raw(&format!(
            r#"[escalation]
enabled = true
min_interval_secs = 0.0
duplicate_distance = -1
[[escalation.endpoints]]
name = "loopback"
url = "{}"
model = "big-vlm"
token_env = ""
max_images = 3
[escalation.tasks.recent]
mode = "always"
"#,
            cloud.url
        ))
        .to_string();
    let daemon = Daemon::start(&config);

    // The first look comes with the camera's first frame: one frame so far, and the answer says so.
    let first = subscriber
        .expect(Duration::from_secs(20), "the first clip answer", |m| {
            m.topic.ends_with("/answer")
        })
        .await
        .json();
    let clip = &first["clip"];
    assert_eq!(clip["frames_wanted"], 4, "{first}");
    assert_eq!(clip["seconds"], 2.0, "{first}");
    let used = clip["frames"].as_array().unwrap().len();
    assert!(used < 4, "{first}");
    assert!(
        clip["note"]
            .as_str()
            .unwrap()
            .contains(&format!("only {used} of 4 frames")),
        "{first}"
    );
    // Escalated ("always") with the one frame there was; the cloud's answer keeps the clip's account.
    assert_eq!(first["tier"], "cloud", "{first}");
    assert_eq!(first["escalation"], "always", "{first}");
    let first_request = &cloud.received()[0];
    assert_eq!(first_request.images().len(), used);

    // For six seconds: answers about four frames spread over the last two seconds, and the buffer's
    // memory at its bound (two seconds at one frame per half second, plus one).
    let bound = 5 * FRAME_BYTES;
    let mut full_answers = 0;
    let mut buffer_sizes = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let message = subscriber
            .expect(Duration::from_secs(10), "answers and stats", |_| true)
            .await;
        let body = message.json();
        if message.topic.ends_with("/stats") {
            if let Some(bytes) = body["clip_buffers"]["cam"]["bytes"].as_u64() {
                buffer_sizes.push(bytes);
            }
            continue;
        }
        let frames = body["clip"]["frames"].as_array().unwrap();
        if frames.len() < 4 {
            continue;
        }
        full_answers += 1;
        assert!(body["clip"].get("note").is_none(), "{body}");
        let offsets: Vec<f64> = frames
            .iter()
            .map(|frame| frame["offset_s"].as_f64().unwrap())
            .collect();
        assert_eq!(offsets[0], 0.0, "{body}");
        assert!(offsets.windows(2).all(|pair| pair[1] > pair[0]), "{body}");
        assert!(*offsets.last().unwrap() <= 2.0, "{body}");
        let seqs: Vec<u64> = frames
            .iter()
            .map(|frame| frame["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|pair| pair[1] > pair[0]), "{body}");
    }
    assert!(
        full_answers >= 3,
        "only {full_answers} answers about 4 frames"
    );
    // Clips of four frames went as three images: the endpoint's cap.
    let sent: Vec<usize> = cloud
        .received()
        .iter()
        .map(|request| request.images().len())
        .collect();
    assert!(sent.contains(&3), "{sent:?}");
    assert!(sent.iter().all(|images| *images <= 3), "{sent:?}");
    assert!(buffer_sizes.len() >= 6, "{buffer_sizes:?}");
    assert!(
        buffer_sizes.iter().all(|bytes| *bytes <= bound),
        "{buffer_sizes:?}"
    );
    assert!(
        buffer_sizes[buffer_sizes.len() - 4..]
            .iter()
            .all(|bytes| *bytes == bound),
        "the buffer is not flat at {bound} bytes: {buffer_sizes:?}"
    );
    daemon.shutdown().await;
}
