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

/// Where `deploy/install.sh` and the Debian package put the unit; a copy under /etc wins.
const UNIT_PATHS: [&str; 2] = [
    "etc/systemd/system/lookout.service",
    "usr/lib/systemd/system/lookout.service",
];

/// The installed unit under `root` (normally `/`): its path, and its text with every drop-in's
/// (`lookout.service.d/*.conf` beside either copy, where `systemctl edit` writes) after it.
pub fn installed_unit(root: &Path) -> Option<(PathBuf, String)> {
    let path = UNIT_PATHS
        .iter()
        .map(|path| root.join(path))
        .find(|path| path.is_file())?;
    let mut text = std::fs::read_to_string(&path).ok()?;
    for unit in UNIT_PATHS {
        let mut folder = root.join(unit).into_os_string();
        folder.push(".d");
        let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(&folder)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "conf")
            })
            .collect();
        drop_ins.sort();
        for drop_in in drop_ins {
            text.push('\n');
            text.push_str(&std::fs::read_to_string(drop_in).unwrap_or_default());
        }
    }
    Some((path, text))
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
    fn the_unit_is_read_with_the_drop_ins_systemctl_edit_writes() {
        let root = tempfile::tempdir().unwrap();
        assert!(installed_unit(root.path()).is_none());
        let shipped = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(shipped.join("lookout.service.d")).unwrap();
        std::fs::write(shipped.join("lookout.service"), SHIPPED).unwrap();
        let edits = root.path().join("etc/systemd/system/lookout.service.d");
        std::fs::create_dir_all(&edits).unwrap();
        std::fs::write(
            edits.join("override.conf"),
            "[Service]\nDeviceAllow=char-nvidia-frontend rw\nDeviceAllow=char-nvidia-uvm rw\n",
        )
        .unwrap();
        std::fs::write(edits.join("notes.txt"), "DeviceAllow=char-other rw").unwrap();
        let (path, text) = installed_unit(root.path()).unwrap();
        assert_eq!(path, shipped.join("lookout.service"));
        assert!(
            !text.contains("char-other"),
            "only .conf files are drop-ins"
        );
        let found = nodes(&["nvidia0", "nvidia-uvm", "dri/renderD128"]);
        assert!(missing_device_allows(&text, Path::new("/dev"), &found).is_empty());
    }

    #[test]
    fn nvidia_nodes_need_their_own_classes() {
        let found = nodes(&["accel/accel0", "dri/renderD128", "nvidia-uvm", "nvidia0"]);
        assert_eq!(
            missing_device_allows(SHIPPED, Path::new("/dev"), &found),
            [
                "DeviceAllow=char-nvidia-uvm rw",
                "DeviceAllow=char-nvidia-frontend rw"
            ]
        );
    }
}
