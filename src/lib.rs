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
//! Imports only point back up this stream: `vision` may name `source::Frame` and `gate::Job`, but a
//! source never names anything downstream. `app` is the one place that knows every stage; it wires them,
//! supervises them, applies a new config (from SIGHUP or a push on `config/desired`: the front half is
//! rebuilt, a new model swapped in after a warm-up) and shuts everything down under a deadline.
//! `config` composes the stages' own config structs, validates them all at once, and layers what the
//! fleet pushes over the local file (`config::remote`: signatures, versions, locked fields).
//! `service` adapts the process to its host (signals, logging, systemd's notify protocol and
//! watchdog); `health` serves `/healthz`, `/readyz` and `/metrics` from the counters. `stats` is the
//! one leaf every stage counts into (and marks its units of work in, for the watchdog); `backoff` is
//! the one retry delay every stage that reconnects uses. `dataset` keeps the cloud's answers to
//! opted-in questions, with their images, as a fine-tuning dataset; `durable` writes files whole.
//! `errors` renders error chains and holds the secrets the process knows: every log line, MQTT payload
//! and record on disk passes it on the way out and leaves without them.
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
pub mod message;
pub mod models;
pub mod outbox;
pub mod publish;
pub mod service;
pub mod source;
pub mod stats;
pub mod validate;
pub mod vision;
