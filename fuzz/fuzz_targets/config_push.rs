//! A config push as the daemon receives it from the broker: parsed, its signature checked, turned
//! into the next remote layer, merged over the embedded default and validated. Nothing may panic,
//! and a push that passes must give a config that passes again (validation is deterministic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::config::remote::{Push, RemoteConfig};
use lookout::config::{DEFAULT_TOML, Env, Layers, RemoteLayer, local_json};

fuzz_target!(|bytes: &[u8]| {
    let Ok(push) = Push::parse(bytes, 1_000_000) else {
        return;
    };
    let trusting = RemoteConfig {
        allow_unsigned: true,
        ..RemoteConfig::default()
    };
    let _ = push.check_signature(&RemoteConfig::default());
    if push.check_signature(&trusting).is_err() {
        return;
    }
    let Ok(remote) = push.next_layer(&RemoteLayer::default()) else {
        return;
    };
    let layers = Layers {
        local: local_json(DEFAULT_TOML).expect("the default parses"),
        remote,
    };
    let env = Env::from_pairs([("LOOKOUT_STATE_DIR", "/nonexistent/lookout-fuzz")]);
    if let Ok(config) = layers.config(&env) {
        assert_eq!(layers.config(&env).ok(), Some(config));
    }
});
