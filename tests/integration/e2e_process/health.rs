//! Issue #14 (deploy files): `postgate health`, the container health check
//! (the image has no curl), asked of a running node's HTTP server.

use super::*;

/// Runs `postgate -c CONFIG health ARGS`: (exit success, stdout + stderr).
async fn health(config: &Path, args: &[&str]) -> (bool, String) {
    let out = timeout(
        Duration::from_secs(30),
        Command::new(&*BIN)
            .arg("-c")
            .arg(config)
            .arg("health")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("health timed out")
    .expect("spawn postgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_for_a_running_node_and_fails_for_a_stopped_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut files = write_node(dir.path(), "node", &Settings::new(&url, up.addr.port()));
    add_user(&files.config).await;
    let serve = Serve::start(&mut files).await;

    let (ok, text) = health(&files.config, &[]).await;
    assert!(ok, "healthz of a running node: {text}");
    assert!(text.contains("/healthz: 200"), "{text}");

    let (ok, text) = health(&files.config, &["--path", "/no-such-page"]).await;
    assert!(!ok, "a 404 is not healthy: {text}");
    assert!(text.contains("answered 404"), "{text}");

    serve.crash().await;
    let (ok, text) = health(&files.config, &["--timeout", "2s"]).await;
    assert!(!ok, "a stopped node is not healthy: {text}");
    assert!(text.contains("connect to"), "{text}");
}
