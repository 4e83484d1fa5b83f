//! `deploy/install.sh` run into a temporary root (DESTDIR style): the layout, idempotence (a second run
//! changes nothing and keeps an edited config), `--uninstall` and `--purge`, bad options; and the
//! installed unit checked by systemd's own tools: `systemd-analyze verify` (no warning at all) and
//! `systemd-analyze security --offline=true` (exposure 2.0 or lower).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn install(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(args)
        .output()
        .expect("bash runs")
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "install.sh failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The arguments that install this build into `root` with the runtime the tests use.
fn into(root: &Path) -> Vec<String> {
    vec![
        "--destdir".to_owned(),
        root.display().to_string(),
        "--binary".to_owned(),
        env!("CARGO_BIN_EXE_lookout").to_owned(),
        "--onnxruntime".to_owned(),
        repo().join(".ort/lib").display().to_string(),
    ]
}

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

const INSTALLED: [(&str, u32); 5] = [
    ("usr/bin/lookout", 0o755),
    ("usr/lib/systemd/system/lookout.service", 0o644),
    ("usr/lib/sysusers.d/lookout.conf", 0o644),
    ("usr/lib/lookout/libonnxruntime.so", 0o644),
    ("etc/lookout/lookout.toml", 0o644),
];

#[test]
fn installs_the_layout_again_and_again_then_uninstalls_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    succeeded(&install(&args(&into(&root))));
    for (path, wanted) in INSTALLED {
        assert_eq!(mode(&root.join(path)), wanted, "{path}");
    }
    assert_eq!(mode(&root.join("etc/lookout/hf_token")), 0o600);
    assert_eq!(
        std::fs::read(root.join("etc/lookout/hf_token")).unwrap(),
        b""
    );
    assert_eq!(mode(&root.join("var/lib/lookout")), 0o750);
    assert_eq!(
        std::fs::read(root.join("usr/bin/lookout")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_lookout")).unwrap()
    );
    assert_eq!(
        std::fs::read(root.join("usr/lib/systemd/system/lookout.service")).unwrap(),
        std::fs::read(repo().join("systemd/lookout.service")).unwrap()
    );
    // The installed config is the documented default and passes the installed binary's check.
    let config = root.join("etc/lookout/lookout.toml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        lookout::config::DEFAULT_TOML
    );
    let check = Command::new(root.join("usr/bin/lookout"))
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Again, over an edited config and a token: both are kept, the rest is the same.
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    std::fs::write(root.join("etc/lookout/hf_token"), "hf_secret\n").unwrap();
    let again = succeeded(&install(&args(&into(&root))));
    assert!(again.contains("Kept the existing"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/lookout/hf_token")).unwrap(),
        "hf_secret\n"
    );
    for (path, wanted) in INSTALLED {
        assert_eq!(mode(&root.join(path)), wanted, "{path}");
    }

    // Uninstall (twice: the second finds nothing to do) keeps config and state.
    std::fs::write(root.join("var/lib/lookout/answers.outbox"), b"waiting").unwrap();
    for _ in 0..2 {
        let mut uninstall = into(&root)[..2].to_vec();
        uninstall.push("--uninstall".to_owned());
        succeeded(&install(&args(&uninstall)));
        for gone in [
            "usr/bin/lookout",
            "usr/lib/systemd/system/lookout.service",
            "usr/lib/sysusers.d/lookout.conf",
            "usr/lib/lookout",
        ] {
            assert!(!root.join(gone).exists(), "{gone} is still there");
        }
        assert!(config.exists());
        assert!(root.join("var/lib/lookout/answers.outbox").exists());
    }
    succeeded(&install(&[
        "--destdir",
        root.to_str().unwrap(),
        "--uninstall",
        "--purge",
    ]));
    assert!(!root.join("etc/lookout").exists());
    assert!(!root.join("var/lib/lookout").exists());
}

/// A runtime with accelerators beside it (a GPU build's providers, a `cuda/` folder, a plugin provider's
/// folder) is installed with them, where the library and Lookout look; an update replaces the folders
/// whole, so a file the new runtime lacks does not linger.
#[test]
fn the_accelerator_libraries_beside_the_runtime_are_installed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(runtime.join("cuda")).unwrap();
    std::fs::create_dir_all(runtime.join("openvino")).unwrap();
    let library = std::fs::canonicalize(repo().join(".ort/lib/libonnxruntime.so")).unwrap();
    std::os::unix::fs::symlink(&library, runtime.join("libonnxruntime.so")).unwrap();
    let beside = [
        "libonnxruntime_providers_cuda.so",
        "cuda/libcudart.so.13",
        "openvino/libonnxruntime_providers_openvino_plugin.so",
        "openvino/libopenvino.so.2641",
    ];
    for file in beside {
        std::fs::write(runtime.join(file), file).unwrap();
    }
    let root = dir.path().join("root");
    let mut list = into(&root);
    list[5] = runtime.display().to_string();
    succeeded(&install(&args(&list)));
    let lib = root.join("usr/lib/lookout");
    for file in beside {
        assert_eq!(
            std::fs::read_to_string(lib.join(file)).unwrap(),
            file,
            "{file}"
        );
    }
    std::fs::remove_file(runtime.join("openvino/libopenvino.so.2641")).unwrap();
    succeeded(&install(&args(&list)));
    assert!(
        lib.join("openvino/libonnxruntime_providers_openvino_plugin.so")
            .exists()
    );
    assert!(
        !lib.join("openvino/libopenvino.so.2641").exists(),
        "a stale file stayed"
    );
}

#[test]
fn bad_options_and_missing_inputs_are_refused_clearly_and_install_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let unknown = install(&["--destdir", root.to_str().unwrap(), "--frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("unknown option --frobnicate"), "{stderr}");
    assert!(
        stderr.contains("--uninstall"),
        "the usage follows: {stderr}"
    );

    let mut no_binary = into(&root);
    no_binary[3] = dir.path().join("missing").display().to_string();
    let output = install(&args(&no_binary));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an executable file"));

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut no_runtime = into(&root);
    no_runtime[5] = empty.display().to_string();
    let output = install(&args(&no_runtime));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no libonnxruntime.so"));
    assert!(
        !root.join("usr/bin/lookout").exists(),
        "installed despite the error"
    );

    let missing_value = install(&["--destdir"]);
    assert_ne!(missing_value.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing_value.stderr).contains("--destdir needs a folder"));
}

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze is installed (make test-deps installs systemd)")
}

/// The unit with its commands pointed at the binary installed under `root`: `verify` checks that
/// every command exists, and the test cannot write /usr/bin.
fn unit_for(root: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo().join("systemd/lookout.service")).unwrap();
    let path = root.join("lookout.service");
    let binary = root.join("usr/bin/lookout").display().to_string();
    std::fs::write(&path, unit.replace("/usr/bin/lookout", &binary)).unwrap();
    path
}

#[test]
fn systemd_finds_the_unit_valid_and_its_sandbox_tight() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    succeeded(&install(&args(&into(&root))));
    let unit = unit_for(&root);

    let verify = systemd_analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    // verify exits 0 on warnings (an unknown key, a bad value), so any output at all is a failure.
    assert!(complaints.trim().is_empty(), "{complaints}");

    // The threshold is the exposure times ten: 20 is 2.0.
    let security = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&security.stderr)
    );
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for lookout.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in {report}"));
    assert!(exposure <= 2.0, "exposure {exposure}");
    for device_access in ["char-video4linux:rw", "char-drm:rw"] {
        assert!(
            report.contains(device_access),
            "cameras and GPUs must stay reachable: {report}"
        );
    }
}
