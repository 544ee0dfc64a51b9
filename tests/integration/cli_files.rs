//! Issue #14: what an operator checks before and around the store:
//! `check-config --no-files` and value errors named by file, line and key;
//! the SQLite file and the files `dev` writes are private (0600); `dev`
//! takes its ports. Through the real binary.

use std::process::{Command, Stdio};

use crate::cli_ops::{ok, out, run};

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn check_config_no_files_and_value_errors_with_lines() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgate.example.toml");
    let dir = tempfile::tempdir().unwrap();
    // The shipped example names a certificate that exists only on the host.
    let o = run(dir.path(), Some(&example), &["check-config"], "");
    assert_eq!(o.status.code(), Some(2), "{:?}", out(&o));
    let o = run(
        dir.path(),
        Some(&example),
        &["check-config", "--no-files"],
        "",
    );
    assert!(
        o.status.success(),
        "--no-files checks all but files: {:?}",
        out(&o)
    );

    // A secret file that is not there: only --no-files accepts it.
    let cfg = dir.path().join("secret.toml");
    std::fs::write(&cfg, "[http]\nadmin_token = { file = \"/nonexistent/admin-token\" }\n\n[[smtp.listener]]\naddress = \"127.0.0.1:2587\"\nmode = \"plain\"\n\n[[upstream]]\nname = \"a\"\nhost = \"smtp.example.net\"\n").unwrap();
    let o = run(dir.path(), Some(&cfg), &["check-config"], "");
    assert_eq!(o.status.code(), Some(2), "{:?}", out(&o));
    let o = run(dir.path(), Some(&cfg), &["check-config", "--no-files"], "");
    assert!(o.status.success(), "{:?}", out(&o));
    assert!(
        out(&o).0.contains("from file /nonexistent/admin-token"),
        "{:?}",
        out(&o)
    );

    for (text, want) in [
        (
            "[queue]\nretry_initial = \"2h\"\nretry_max = \"1h\"\n",
            "bad.toml:2:1: queue.retry_initial: 2h is longer than queue.retry_max (1h)",
        ),
        (
            "[queue]\nretry_initial = \"1h\"\nlifetime = \"30m\"\n",
            "bad.toml:3:1: queue.lifetime: 30m is shorter than the first retry",
        ),
        (
            "[[upstream]]\nname = \"a\"\nhost = \"smtp.example.net\"\nrate = 0.0\n",
            "bad.toml:4:1: upstream[0].rate: 0 is not a rate",
        ),
        (
            "[[upstream]]\nname = \"a\"\nhost = \"smtp.example.net\"\nrate = 1.0\nburst = 0\n",
            "bad.toml:5:1: upstream[0].burst: must be at least 1",
        ),
        (
            "[[upstream]]\nname = \"a\"\nhost = \"mta.example.net\"\ntls = \"none\"\nusername = \"u\"\npassword = \"hunter2\"\n",
            "bad.toml:4:1: upstream[0].tls: tls = \"none\" would send the AUTH password in clear text to mta.example.net",
        ),
        (
            "[store]\nmax_connections = 0\n",
            "bad.toml:2:1: store.max_connections: must be at least 1",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let o = run(dir.path(), Some(&bad), &["check-config", "--no-files"], "");
        let (stdout, stderr) = out(&o);
        assert_eq!(o.status.code(), Some(2), "{text}: {stdout}");
        assert!(stderr.contains(&format!("{}/{want}", dir.path().display())), "{text}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[test]
fn the_sqlite_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("private.db");
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!("[store]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    ok(dir.path(), &cfg, &["migrate"], "");
    assert_eq!(mode(&db), 0o600, "it holds password hashes and DKIM keys");
    for side in ["private.db-wal", "private.db-shm"] {
        let p = dir.path().join(side);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{side}");
        }
    }
}

#[test]
fn dev_takes_its_ports_and_writes_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let ports: Vec<u16> = (0..4).map(|_| crate::common::free_port()).collect();
    let (smtp, smtps, http, sink) = (ports[0], ports[1], ports[2], ports[3]);
    let child = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .current_dir(dir.path())
        .env_remove("POSTGATE_CONFIG")
        .args(["dev", "--dir", data.to_str().unwrap()])
        .args([
            "--smtp-port",
            &smtp.to_string(),
            "--smtps-port",
            &smtps.to_string(),
        ])
        .args([
            "--http-port",
            &http.to_string(),
            "--sink",
            &format!("127.0.0.1:{sink}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = crate::common::KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", smtp)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "dev never listened on {smtp}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", smtps)).is_ok(),
        "smtps port"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok(),
        "http port"
    );
    let config = std::fs::read_to_string(data.join("postgate.toml")).unwrap();
    assert!(config.contains(&format!("port = {sink}")), "{config}");
    for f in [
        "postgate.toml",
        "cert.pem",
        "key.pem",
        "dev-password",
        "postgate.db",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}
