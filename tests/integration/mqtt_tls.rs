//! TLS to the broker: a mosquitto TLS listener that requires a client certificate, with a CA, server and
//! client certificates made by openssl for this test. The daemon connects over mqtts:// with the CA and
//! its client certificate; without the client certificate the broker refuses it and it keeps retrying.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, Toml, free_port};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA, and a server (localhost) and client certificate it signed, as PEM files in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=lookout-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, subject) in [
        ("server", "/CN=localhost"),
        ("client", "/CN=lookout-client"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_publishes_over_mutual_tls() {
    let (plain_port, tls_port) = (free_port(), free_port());
    let mut broker = Mosquitto::prepare(
        plain_port,
        &format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {{dir}}/ca.pem\ncertfile {{dir}}/server.pem\nkeyfile {{dir}}/server.key\nrequire_certificate true\n"
        ),
    );
    make_certificates(broker.dir());
    broker.launch();
    common::wait_for_port(tls_port);
    let dir = broker.dir().display().to_string();
    let config = |client_files: &str, device: &str| {
        Toml::device(device)
            .mqtt(&format!("mqtts://localhost:{tls_port}"))
            .string("ca_file", format!("{dir}/ca.pem"))
            .raw(client_files)
            .camera("cam", 32, 32, 10.0)
            .task("t", "cam", "?")
            .interval(0.2)
            .to_string()
    };
    // The test listens on the plain listener of the same broker.
    let mut watcher = Subscriber::connect(plain_port, &["lookout/+/cam/t/answer"]).await;

    let without_cert = Daemon::start(&config("", "anonymous"));
    let with_cert = Daemon::start(&config(
        &format!("client_cert_file = \"{dir}/client.pem\"\nclient_key_file = \"{dir}/client.key\""),
        "trusted",
    ));
    watcher
        .expect(Duration::from_secs(20), "an answer over TLS", |m| {
            m.topic == "lookout/trusted/cam/t/answer"
        })
        .await;
    let seen = watcher.collect_for(Duration::from_secs(1)).await;
    assert!(
        !seen
            .iter()
            .any(|m| m.topic.starts_with("lookout/anonymous/")),
        "a client without certificate got in"
    );
    assert!(!without_cert.task.is_finished());
    with_cert.shutdown().await;
    without_cert.shutdown().await;
}
