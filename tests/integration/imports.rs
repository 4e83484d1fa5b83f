//! Who knows whom (STYLE.md): data flows source -> gate -> vision -> escalate -> publish, with dataset
//! after escalate, and imports only point back up that stream by one stage, or down to a leaf. This scan
//! reads every file under src/ and fails naming each import that breaks the rule, so the rule keeps
//! holding as the code grows.

use std::path::{Path, PathBuf};

/// The stages in the data's order, each with the one stage it may name (the one before it).
const STAGES: [(&str, Option<&str>); 6] = [
    ("source", None),
    ("gate", Some("source")),
    ("vision", Some("gate")),
    ("escalate", Some("vision")),
    ("dataset", Some("escalate")),
    ("publish", Some("escalate")),
];

/// Modules every other may use; they name no stage and nothing outside the leaves. `outbox` is the
/// on-disk log both queues use (the publisher's outbox and escalation's offline queue).
const LEAVES: [&str; 9] = [
    "message", "validate", "errors", "stats", "backoff", "durable", "env", "outbox", "https",
];

/// The modules of the crate that `text` (a file under src/) names with `crate::`, comments left out.
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(
                group
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or("").to_owned()),
            );
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found.sort();
    found.dedup();
    found
}

/// Why `module` may not name `used`, or `None` when it may.
fn forbidden(module: &str, used: &str) -> Option<&'static str> {
    if used == module || LEAVES.contains(&used) {
        return None;
    }
    if LEAVES.contains(&module) {
        return Some("a leaf names only leaves");
    }
    if let Some((_, before)) = STAGES.iter().find(|(stage, _)| *stage == module) {
        return (Some(used) != *before)
            .then_some("a stage names only the stage before it and the leaves");
    }
    match module {
        // Model folders: fetched, checked and built for vision, whose layout they follow.
        "models" => (used != "vision").then_some("models names only vision and the leaves"),
        // The host: logging, signals, systemd. `app` calls it, never the other way.
        "service" => (used != "config").then_some("service names only config and the leaves"),
        "health" => Some("health names only the leaves"),
        "config" => ["app", "service"]
            .contains(&used)
            .then_some("config composes the stages' configs and names no control plane"),
        // `app` is the one place that knows every stage.
        _ => None,
    }
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn imports_point_back_up_the_stream_by_one_stage_or_down_to_a_leaf() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for file in sources(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for used in imports(&text) {
            if let Some(why) = forbidden(&module, &used) {
                broken.push(format!("{}: names {used} ({why})", relative.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the rule:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_scan_sees_each_form_of_import_and_the_rule_refuses_what_it_should() {
    let text = "use crate::gate::Job;\n// use crate::publish::Topics;\nuse crate::{message, outbox::Outbox};\nlet x = crate::vision::load();";
    assert_eq!(imports(text), ["gate", "message", "outbox", "vision"]);
    assert_eq!(forbidden("vision", "gate"), None);
    assert!(forbidden("vision", "source").is_some(), "skips a stage");
    assert!(forbidden("gate", "vision").is_some(), "names a later stage");
    assert!(forbidden("escalate", "config").is_some());
    assert!(forbidden("escalate", "app").is_some());
    assert!(forbidden("message", "gate").is_some());
    assert!(forbidden("service", "app").is_some());
    assert_eq!(forbidden("app", "service"), None);
}
