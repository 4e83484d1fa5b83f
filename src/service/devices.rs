//! Whether the systemd unit's sandbox lets the box's accelerators through, for `lookout doctor`.
//!
//! The unit closes the device list (`DevicePolicy=closed`) and opens what Lookout uses by device class:
//! V4L2 cameras, DRM render nodes (GPUs, many NPUs) and accel nodes (NPUs). NVIDIA's nodes are their
//! own classes, left closed by default because most boxes have none; a box that has them needs two
//! lines more. Classes are named as in `/proc/devices`, the way `DeviceAllow=char-<class>` takes them.

use std::path::{Path, PathBuf};

/// The device nodes an accelerator is reached through, and the `DeviceAllow=` line each class needs.
const CLASSES: [(&str, &str); 4] = [
    ("/dev/dri", "DeviceAllow=char-drm rw"),
    ("/dev/accel", "DeviceAllow=char-accel rw"),
    ("/dev/nvidia", "DeviceAllow=char-nvidia-frontend rw"),
    ("/dev/nvidia-uvm", "DeviceAllow=char-nvidia-uvm rw"),
];

/// Where `deploy/install.sh` and the Debian package put the unit; an override under /etc wins.
pub const UNIT_PATHS: [&str; 2] = [
    "/etc/systemd/system/lookout.service",
    "/usr/lib/systemd/system/lookout.service",
];

/// The accelerator device nodes in `dev` (normally `/dev`): DRM and accel nodes, NVIDIA's.
pub fn accelerator_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes = Vec::new();
    for folder in ["dri", "accel"] {
        if let Ok(entries) = std::fs::read_dir(dev.join(folder)) {
            nodes.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(dev) {
        nodes.extend(entries.flatten().map(|entry| entry.path()).filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("nvidia"))
        }));
    }
    nodes.sort();
    nodes
}

/// The `DeviceAllow=` lines `unit` (the unit file's text) lacks for `nodes` (found under `dev`), in
/// order, each once.
pub fn missing_device_allows(unit: &str, dev: &Path, nodes: &[PathBuf]) -> Vec<&'static str> {
    let allowed: Vec<String> = unit
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut missing = Vec::new();
    for node in nodes {
        let Ok(relative) = node.strip_prefix(dev) else {
            continue;
        };
        let relative = Path::new("/dev").join(relative);
        // The most specific class whose prefix the node has (nvidia-uvm before nvidia).
        let class = CLASSES
            .iter()
            .filter(|(prefix, _)| relative.to_string_lossy().starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len());
        if let Some((_, line)) = class
            && !allowed.iter().any(|allowed| allowed == line)
            && !missing.contains(line)
        {
            missing.push(*line);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "[Service]\nDevicePolicy=closed\nDeviceAllow=char-video4linux rw\n\
                           DeviceAllow=char-drm   rw\nDeviceAllow=char-accel rw\n";

    fn nodes(names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|name| Path::new("/dev").join(name))
            .collect()
    }

    #[test]
    fn the_shipped_unit_lets_render_and_accel_nodes_through() {
        let found = nodes(&["dri/card0", "dri/renderD128", "accel/accel0"]);
        assert!(missing_device_allows(SHIPPED, Path::new("/dev"), &found).is_empty());
    }

    #[test]
    fn nvidia_nodes_need_their_two_classes_each_named_once() {
        let found = nodes(&[
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "dri/renderD128",
        ]);
        assert_eq!(
            missing_device_allows(SHIPPED, Path::new("/dev"), &found),
            [
                "DeviceAllow=char-nvidia-frontend rw",
                "DeviceAllow=char-nvidia-uvm rw"
            ]
        );
        let opened = format!(
            "{SHIPPED}DeviceAllow=char-nvidia-frontend rw\nDeviceAllow=char-nvidia-uvm rw\n"
        );
        assert!(missing_device_allows(&opened, Path::new("/dev"), &found).is_empty());
    }

    #[test]
    fn a_unit_without_device_lines_misses_the_classes_the_box_has() {
        let found = nodes(&["dri/renderD128"]);
        assert_eq!(
            missing_device_allows(
                "[Service]\nDevicePolicy=closed\n",
                Path::new("/dev"),
                &found
            ),
            ["DeviceAllow=char-drm rw"]
        );
    }

    #[test]
    fn nodes_are_found_in_their_folders() {
        let dev = tempfile::tempdir().unwrap();
        for folder in ["dri", "accel"] {
            std::fs::create_dir(dev.path().join(folder)).unwrap();
        }
        for node in [
            "dri/renderD128",
            "accel/accel0",
            "nvidia0",
            "nvidia-uvm",
            "null",
        ] {
            std::fs::write(dev.path().join(node), "").unwrap();
        }
        let found = accelerator_nodes(dev.path());
        let names: Vec<String> = found
            .iter()
            .map(|node| node.strip_prefix(dev.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["accel/accel0", "dri/renderD128", "nvidia-uvm", "nvidia0"]
        );
        assert_eq!(
            missing_device_allows(SHIPPED, dev.path(), &found),
            [
                "DeviceAllow=char-nvidia-uvm rw",
                "DeviceAllow=char-nvidia-frontend rw"
            ]
        );
    }
}
