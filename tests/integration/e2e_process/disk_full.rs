//! A full disk under a SQLite node (issue 13, item 1): the store lives on
//! a small tmpfs that a filler file fills up. While full, messages that
//! cannot be committed get 451 4.3.0; once the filler is gone the same
//! node accepts and delivers again within seconds, without a restart, and
//! every message that got a 250 is delivered exactly once.
//!
//! Needs `mount -t tmpfs` (root, as CI runs); without it the test says why
//! and returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A tmpfs mounted for the test; unmounted (lazily, so a leftover open
/// file cannot keep it) when dropped, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes zeros to `path` until the filesystem is full (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 16];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    let _ = f.sync_all();
}

/// A message of about `kib` KiB with a unique subject.
fn big_message(subject: &str, kib: usize) -> String {
    let mut m = message(subject);
    let line = format!("{}\r\n", "x".repeat(510));
    m.push_str(&line.repeat(kib * 2));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_is_a_451_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("fs");
    let _fs = match Tmpfs::mount(&mnt, "24m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED a_full_disk_under_sqlite...: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let url = format!("sqlite://{}", mnt.join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut files = write_node(dir.path(), "full", &Settings::new(&url, up.addr.port()));
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let mut accepted: Vec<String> = Vec::new();
    c.send("bob@dest.example", &message("before"))
        .await
        .unwrap();
    accepted.push("before".into());
    wait_delivered(&up, &accepted, Duration::from_secs(30)).await;

    // Full: messages larger than the WAL can take without growing.
    let filler = mnt.join("filler");
    fill(&filler);
    let mut refused = 0;
    for i in 0..6 {
        let subject = format!("full-{i}");
        match c
            .send("bob@dest.example", &big_message(&subject, 3 * 1024))
            .await
        {
            Ok(()) => accepted.push(subject),
            Err((code, text)) => {
                assert_eq!(code, 451, "{text}");
                assert!(text.contains("4.3.0"), "{text}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 3, "a full disk refused only {refused} of 6");

    // Space back: acceptance resumes within seconds, on the same node.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    // A new session per try: the refusals above count towards the
    // session's error limit.
    drop(c);
    loop {
        let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 235);
        match c.send("bob@dest.example", &message("resumed")).await {
            Ok(()) => break,
            Err((451, text)) if freed.elapsed() < Duration::from_secs(10) => {
                eprintln!("still refused: {text}");
                sleep(Duration::from_millis(250)).await;
            }
            Err(other) => panic!(
                "no acceptance {:?} after the disk was freed: {other:?}\n{}",
                freed.elapsed(),
                node.logs()
            ),
        }
    }
    accepted.push("resumed".into());
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    // And stays up: every further message, large or small, is taken at once.
    for i in 0..10 {
        let subject = format!("after-{i}");
        let body = if i % 3 == 0 {
            big_message(&subject, 1024)
        } else {
            message(&subject)
        };
        c.send("bob@dest.example", &body)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e:?}\n{}", node.logs()));
        accepted.push(subject);
    }
    for _ in 0..10 {
        assert_eq!(
            http_status(files.http, "/readyz").await,
            Some(200),
            "/readyz after the disk was freed"
        );
        sleep(Duration::from_millis(100)).await;
    }
    wait_delivered(&up, &accepted, Duration::from_secs(20)).await;
    wait_queue_empty(&files.config, Duration::from_secs(20)).await;
    let mut got = received_subjects(&up);
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted, "every accepted message exactly once");
    assert!(!node.logs().contains("panicked"), "{}", node.logs());
}
