//! The one way Lookout builds an HTTPS client (the cloud router, HTTP snapshot sources, the Hub).
//!
//! TLS runs on rustls with ring as its only cryptography provider: reqwest's and rumqttc's default
//! provider, aws-lc-rs, compiles a large C library that was the slowest part of a fresh build. reqwest
//! needs the provider installed before it builds a client; rumqttc's MQTT over TLS finds ring on its own,
//! it being the only provider the build has.

/// A client builder with ring installed as the process's TLS provider.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Installing again fails harmlessly: the provider installed first, the same one, stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
