//! Every integration test but the signal scenarios, in one binary: each binary links ONNX Runtime, rumqttd,
//! axum and reqwest, and building and linking one per file was a large share of a fresh build. The tests
//! share this process safely: none sets an environment variable, changes the current folder, installs a
//! tracing subscriber or a signal handler (signals.rs does, so it stays a binary of its own), ports come
//! from `common::free_port`, and the secrets in-process daemons hold (`errors::hold` is process-wide) are
//! distinct strings no other test expects to read.

#[path = "../common/mod.rs"]
mod common;

mod ask_cli;
mod backpressure;
mod broker_resilience;
mod cli;
mod clips;
mod daemon_smolvlm;
mod dataset;
mod dataset_process;
mod decoder_precision;
mod embedded_broker;
mod embedding;
mod escalation;
mod home_assistant;
mod imports;
mod install;
mod models_build;
mod models_fetch;
mod mqtt_contract;
mod mqtt_tls;
mod outbox;
mod outbox_process;
mod reload;
mod remote_config;
mod secrets;
mod service;
mod smolvlm_conformance;
mod sources;
