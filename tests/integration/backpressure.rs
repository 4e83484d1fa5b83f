//! A slow analyser must never make capture fall behind or memory grow: the camera keeps its frame rate,
//! the job queue holds at most one job per camera (newer frames replace waiting ones), and answers are
//! about fresh frames rather than a growing backlog.

use crate::common;

use std::time::Duration;

use common::{Daemon, Mosquitto, PixelAnalyser, Subscriber, Toml};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_analyser_keeps_frames_fresh_and_the_queue_bounded() {
    let broker = Mosquitto::start();
    let config = Toml::device("slow")
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.25)
        .camera("fast", 64, 48, 50.0)
        .task("a", "fast", "a?")
        .interval(0.02)
        .task("b", "fast", "b?")
        .interval(0.02)
        .to_string();
    let mut watcher = Subscriber::connect(broker.port, &["lookout/slow/#"]).await;
    // Each job takes 300 ms: about 15x slower than the camera delivers frames.
    let daemon = Daemon::start_with(
        &config,
        Box::new(PixelAnalyser {
            delay: Duration::from_millis(300),
        }),
    );
    let messages = watcher.collect_for(Duration::from_secs(4)).await;
    daemon.shutdown().await;

    let stats: Vec<serde_json::Value> = messages
        .iter()
        .filter(|m| m.topic == "lookout/slow/stats")
        .map(|m| m.json())
        .collect();
    let last = stats.last().expect("stats were published");
    eprintln!("stats after about 4 s: {last}");
    let captured = last["frames"]["captured"].as_u64().unwrap();
    assert!(
        captured >= 100,
        "capture fell behind: {captured} frames in about 4 s at 50 fps"
    );
    assert!(
        last["frames"]["merged"].as_u64().unwrap() > 0,
        "jobs were never merged: {last}"
    );
    assert!(
        stats
            .iter()
            .all(|s| s["queues"]["pending_jobs"].as_u64() <= Some(1)),
        "more than one job waited for one camera"
    );

    let answers: Vec<serde_json::Value> = messages
        .iter()
        .filter(|m| m.topic.ends_with("/answer"))
        .map(|m| m.json())
        .collect();
    assert!(answers.len() >= 6, "only {} answers", answers.len());
    let ages: Vec<f64> = answers
        .iter()
        .map(|a| a["timings_ms"]["total"].as_f64().unwrap())
        .collect();
    eprintln!(
        "{} answers; ages from capture (ms): {ages:.0?}",
        answers.len()
    );
    for answer in &answers[answers.len() / 2..] {
        let age = answer["timings_ms"]["total"].as_f64().unwrap();
        // A queue that kept every frame would be seconds behind by now; the newest-frame policy keeps
        // each answer within about two analyser runs of its capture.
        assert!(
            age < 2_000.0,
            "an answer about a frame {age} ms old: {answer}"
        );
    }
}
