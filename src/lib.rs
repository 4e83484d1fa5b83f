//! Lookout: an edge daemon that watches cameras, asks a vision-language model about what it sees, sends
//! the answers it is unsure of to a larger hosted model, and publishes every answer over MQTT.
//!
//! # How data moves
//!
//! ```text
//!  source/  ──watch (newest frame)──▶  gate/  ──JobQueue (newest job per camera)──▶  vision/
//!  cameras, HTTP snapshots,            which frames are worth a look:             the Analyser answers
//!  files, synthetic patterns           interval, change, on-demand asks           each question
//!                                                                                     │
//!                                         escalate/  ◀──mpsc (blocks)─────────────────┘
//!                                         policy, budgets; unsure answers go to the cloud
//!                                         (one lane per task; unreachable: queued on disk)
//!                                             │  ──mpsc (drops the newest)──▶  dataset/
//!                                             │     opted-in cloud answers with their images,
//!                                             │     saved as an imagefolder for fine-tuning
//!                                         publish/  ◀──mpsc (blocks)
//!                                         MQTT: answers, status, stats; asks come back in
//!                                         answers wait in outbox/ (on disk) until acked
//! ```
//!
//! Imports only point back up this stream by one stage, or down to a leaf: `vision` may name
//! `gate::JobQueue`, but no stage names a later one, skips one to borrow its types, or names `app`,
//! `config` or the command line (`tests/integration/imports.rs` holds the rule). The words stages share
//! live in the leaf `message` (frames, clips, requests, tasks, asks, the published answer, captures for
//! the dataset, push acks); each stage owns its config struct and checks it with the leaf `validate`.
//! The other leaves: `stats` (the counters every stage counts into and marks its units of work in, for
//! the watchdog), `backoff` (the one retry delay), `durable` (whole-file writes), `env` (the process
//! environment as a value), `https` (the one HTTPS client builder, its TLS provider installed), `errors` (error chains, and the secrets the process knows: every log line,
//! MQTT payload and record on disk passes it on the way out and leaves without them) and `outbox` (the
//! on-disk log that both the publisher's outbox and escalation's offline queue are).
//!
//! `app` is the one place that knows every stage; it wires them, supervises them, applies a new config
//! (from SIGHUP or a push on `config/desired`: the front half is rebuilt, a new model swapped in after a
//! warm-up) and shuts everything down under a deadline. `config` composes the stages' own config
//! structs, validates them all at once, and layers what the fleet pushes over the local file
//! (`config::remote`: signatures, versions, locked fields). `service` adapts the process to its host
//! (signals, logging, systemd's notify protocol and watchdog) and is called by `app`, never the other
//! way; `health` serves `/healthz`, `/readyz` and `/metrics` from the counters; `models` fetches model
//! folders from the Hub and checks them. The binary (`main.rs`, one file per subcommand in `cli/`) only
//! parses arguments, calls the library and maps errors to exit codes. Each stage's work runs in a span
//! named after the stage with its camera (and task) as fields, so `LOOKOUT_LOG` can follow one camera.
//!
//! Every channel is bounded and its creation says what happens when it is full: frames keep the newest,
//! jobs keep the newest frame per camera with the union of its requests, outcomes block briefly between
//! vision, escalation and the publisher (each escalation lane holds a few answers of its own task), and
//! cloud answers on their way to the dataset folder are dropped when it falls behind; the outbox
//! (bounded by size and age, oldest dropped) is where answers wait for the broker, so a broker outage
//! never holds up the pipeline or grows memory.

pub mod app;
pub mod backoff;
pub mod config;
pub mod dataset;
pub mod durable;
pub mod env;
pub mod errors;
pub mod escalate;
pub mod gate;
pub mod health;
pub mod https;
pub mod message;
pub mod models;
pub mod outbox;
pub mod publish;
pub mod service;
pub mod source;
pub mod stats;
pub mod validate;
pub mod vision;
