//! Issue #14: the operator's daily commands through the real binary on both
//! stores: `--json` on list/show commands (RFC 3339 times, errors on stderr
//! only), `user show`, credential disable/enable, `user limits`, helpful
//! `user passwd`, sender patterns, DKIM publish-then-sign, and management
//! commands that never create a store.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::pg_database_url;

/// Runs `postgate [-c CONFIG] ARGS...` in `cwd` with `stdin`.
pub(crate) fn run(
    cwd: &std::path::Path,
    config: Option<&std::path::Path>,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgate"));
    cmd.current_dir(cwd).env_remove("POSTGATE_CONFIG");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postgate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A store of each backend with its config file: (dir, config, url).
async fn stores() -> Vec<(tempfile::TempDir, std::path::PathBuf, String)> {
    let mut v = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("ops.db").display());
    v.push((dir, sqlite));
    if let Some(pg) = pg_database_url().await {
        v.push((tempfile::tempdir().unwrap(), pg));
    }
    v.into_iter()
        .map(|(dir, url)| {
            let cfg = dir.path().join("postgate.toml");
            std::fs::write(
                &cfg,
                format!("[store]\nurl = {url:?}\n\n[auth.hash]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n"),
            )
            .unwrap();
            (dir, cfg, url)
        })
        .collect()
}

/// Succeeds, or panics with the output.
pub(crate) fn ok(
    dir: &std::path::Path,
    cfg: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> String {
    let o = run(dir, Some(cfg), args, stdin);
    assert!(o.status.success(), "{args:?}: {:?}", out(&o));
    out(&o).0
}

/// Fails with exit code 1 and nothing on stdout; returns stderr.
fn fails(dir: &std::path::Path, cfg: &std::path::Path, args: &[&str]) -> String {
    let o = run(dir, Some(cfg), args, "");
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stdout} {stderr}");
    assert!(
        stdout.is_empty(),
        "{args:?}: errors go to stderr only; stdout: {stdout}"
    );
    stderr
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// `2026-12-06T13:14:31Z`.
fn is_rfc3339_utc(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    s.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars().filter(char::is_ascii_digit).count() == 14
}

#[tokio::test]
async fn management_commands_never_create_a_store() {
    // Without -c, in a directory with no postgate.toml: the built-in
    // default ./postgate.db is looked for, not created.
    let empty = tempfile::tempdir().unwrap();
    let o = run(
        empty.path(),
        None,
        &["user", "add", "bob", "--password-stdin"],
        "pw\n",
    );
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout} {stderr}");
    assert!(
        stderr.contains("no postgate store at sqlite://postgate.db")
            && stderr.contains("SQLite file postgate.db does not exist")
            && stderr.contains("built-in default")
            && stderr.contains("postgate migrate"),
        "{stderr}"
    );
    assert!(
        !empty.path().join("postgate.db").exists(),
        "a store was created"
    );
    for args in [
        &["user", "list"][..],
        &["queue", "list"],
        &["dkim", "list"],
        &["sender", "list", "bob"],
    ] {
        let o = run(empty.path(), None, args, "");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
    }
    assert!(
        !empty.path().join("postgate.db").exists(),
        "a store was created"
    );

    for (dir, cfg, url) in stores().await {
        let err = fails(dir.path(), &cfg, &["user", "list"]);
        assert!(err.contains("no postgate store at"), "{url}: {err}");
        assert!(
            err.contains(&format!("store.url of {}", cfg.display())),
            "{url}: {err}"
        );
        if url.starts_with("sqlite") {
            assert!(err.contains("does not exist"), "{err}");
            assert!(!dir.path().join("ops.db").exists(), "{url}: created");
        } else {
            assert!(err.contains("the database has no postgate schema"), "{err}");
            assert!(!err.contains("password"), "{err}");
        }
        // `migrate` creates it; then the same command works.
        ok(dir.path(), &cfg, &["migrate"], "");
        ok(dir.path(), &cfg, &["user", "list"], "");
    }
}

#[tokio::test]
async fn user_commands_print_json_and_show_everything_on_both_backends() {
    for (dir, cfg, url) in stores().await {
        let d = dir.path();
        ok(d, &cfg, &["migrate"], "");
        ok(
            d,
            &cfg,
            &["user", "add", "Alice", "--password-stdin"],
            "first pass\n",
        );
        ok(
            d,
            &cfg,
            &[
                "user",
                "credential",
                "add",
                "alice",
                "printer",
                "--password-stdin",
            ],
            "printer pass\n",
        );
        ok(d, &cfg, &["sender", "allow", "alice", "@Corp.Example"], "");

        // `*@domain` is not a wildcard: refused, naming the right form.
        let err = fails(d, &cfg, &["sender", "allow", "alice", "*@example.com"]);
        assert!(err.contains("write @domain"), "{url}: {err}");

        let text = ok(d, &cfg, &["user", "show", "alice"], "");
        assert!(text.contains("username:    alice"), "{url}: {text}");
        assert!(text.contains("last login:  never"), "{url}: {text}");
        assert!(
            text.contains("printer") && text.contains("@corp.example"),
            "{url}: {text}"
        );

        let doc = json(&ok(d, &cfg, &["user", "show", "alice", "--json"], ""));
        assert_eq!(doc["username"], "alice", "{url}");
        assert_eq!(doc["enabled"], true);
        assert!(is_rfc3339_utc(&doc["created_at"]), "{doc}");
        assert!(doc["last_login_at"].is_null(), "{doc}");
        assert_eq!(doc["senders"], serde_json::json!(["@corp.example"]));
        let labels: Vec<&str> = doc["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["default", "printer"], "{doc}");
        assert!(
            is_rfc3339_utc(&doc["credentials"][0]["created_at"]),
            "{doc}"
        );
        assert!(doc["limits"]["messages_per_hour"].is_null(), "{doc}");

        let users = json(&ok(d, &cfg, &["user", "list", "--json"], ""));
        assert_eq!(users["users"][0]["username"], "alice");
        assert_eq!(users["users"][0]["credentials"], 2);
        assert!(is_rfc3339_utc(&users["users"][0]["created_at"]), "{users}");
        let table = ok(d, &cfg, &["user", "list"], "");
        let created = users["users"][0]["created_at"].as_str().unwrap();
        assert!(
            table.contains(created),
            "tables show the same RFC 3339 times: {table}"
        );
        let senders = json(&ok(d, &cfg, &["sender", "list", "alice", "--json"], ""));
        assert_eq!(senders["senders"][0], "@corp.example");
        let creds = json(&ok(
            d,
            &cfg,
            &["user", "credential", "list", "alice", "--json"],
            "",
        ));
        assert_eq!(creds["credentials"][1]["label"], "printer");
        assert!(creds["credentials"][1]["last_used_at"].is_null());

        // Errors: stderr only, no table header first.
        let err = fails(d, &cfg, &["user", "credential", "list", "nobody"]);
        assert!(err.contains("user \"nobody\" not found"), "{err}");
        let err = fails(d, &cfg, &["user", "show", "nobody", "--json"]);
        assert!(err.contains("not found"), "{err}");

        // Credential disable/enable: a disabled credential cannot log in.
        let store = postgate::store::open(&url, &Default::default())
            .await
            .unwrap();
        ok(
            d,
            &cfg,
            &["user", "credential", "disable", "alice", "printer"],
            "",
        );
        let rec = store.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(rec.credentials.len(), 1, "{url}: only default is enabled");
        let doc = json(&ok(
            d,
            &cfg,
            &["user", "credential", "list", "alice", "--json"],
            "",
        ));
        assert_eq!(doc["credentials"][1]["enabled"], false);
        ok(
            d,
            &cfg,
            &["user", "credential", "enable", "alice", "printer"],
            "",
        );
        assert_eq!(
            store
                .login_lookup("alice")
                .await
                .unwrap()
                .unwrap()
                .credentials
                .len(),
            2
        );
        let err = fails(
            d,
            &cfg,
            &["user", "credential", "disable", "alice", "scanner"],
        );
        assert!(
            err.contains("credential \"scanner\" of user \"alice\" not found"),
            "{err}"
        );

        // Per-user limit overrides without SQL.
        ok(
            d,
            &cfg,
            &["user", "limits", "set", "alice", "--messages-per-hour", "5"],
            "",
        );
        ok(
            d,
            &cfg,
            &[
                "user",
                "limits",
                "set",
                "alice",
                "--concurrent-sessions",
                "2",
            ],
            "",
        );
        let l = json(&ok(
            d,
            &cfg,
            &["user", "limits", "show", "alice", "--json"],
            "",
        ));
        assert_eq!(l["messages_per_hour"], 5, "{url}: {l}");
        assert_eq!(
            l["concurrent_sessions"], 2,
            "{url}: set keeps the others: {l}"
        );
        assert!(l["messages_per_day"].is_null());
        let rec = store.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(
            rec.limits.messages_per_hour,
            Some(5),
            "{url}: the login sees it"
        );
        let text = ok(d, &cfg, &["user", "limits", "show", "alice"], "");
        assert!(
            text.contains("messages_per_day") && text.contains("default"),
            "{text}"
        );
        let o = run(d, Some(&cfg), &["user", "limits", "set", "alice"], "");
        assert_eq!(
            o.status.code(),
            Some(2),
            "set without a value: {:?}",
            out(&o)
        );
        ok(d, &cfg, &["user", "limits", "clear", "alice"], "");
        let rec = store.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(
            rec.limits,
            postgate::store::LimitOverrides::default(),
            "{url}"
        );

        // passwd on a user without a "default" credential names the others.
        ok(
            d,
            &cfg,
            &["user", "credential", "revoke", "alice", "default"],
            "",
        );
        let o = run(
            d,
            Some(&cfg),
            &["user", "passwd", "alice", "--password-stdin"],
            "new\n",
        );
        let (stdout, err) = out(&o);
        assert_eq!(o.status.code(), Some(1), "{stdout}");
        assert!(
            err.contains("user \"alice\" has no credential \"default\"; its credentials: printer"),
            "{url}: {err}"
        );
        ok(
            d,
            &cfg,
            &[
                "user",
                "passwd",
                "alice",
                "--label",
                "printer",
                "--password-stdin",
            ],
            "new\n",
        );
    }
}

#[tokio::test]
async fn dkim_keys_are_published_before_they_sign_on_both_backends() {
    for (dir, cfg, url) in stores().await {
        let d = dir.path();
        ok(d, &cfg, &["migrate"], "");
        let store = postgate::store::open(&url, &Default::default())
            .await
            .unwrap();
        let generated = ok(
            d,
            &cfg,
            &[
                "dkim",
                "generate",
                "--domain",
                "Example.com",
                "--selector",
                "s1",
                "--algorithm",
                "ed25519",
                "--inactive",
            ],
            "",
        );
        assert!(generated.contains("INACTIVE"), "{url}: {generated}");
        assert!(
            store.dkim_active_keys().await.unwrap().is_empty(),
            "{url}: an inactive key signs"
        );

        // `show` prints the same record again.
        let record = generated
            .lines()
            .find(|l| l.starts_with("s1._domainkey.example.com"))
            .unwrap_or_else(|| panic!("{generated}"))
            .to_string();
        let shown = ok(d, &cfg, &["dkim", "show", "s1", "example.com"], "");
        assert!(shown.contains(&record), "{url}: {shown}");
        assert!(shown.contains("inactive"), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        let doc = json(&ok(
            d,
            &cfg,
            &["dkim", "show", "S1", "example.com", "--json"],
            "",
        ));
        assert_eq!(doc["status"], "inactive");
        assert!(
            doc["dns_value"]
                .as_str()
                .unwrap()
                .starts_with("v=DKIM1; k=ed25519; p="),
            "{doc}"
        );
        assert!(is_rfc3339_utc(&doc["created_at"]), "{doc}");
        let list = json(&ok(d, &cfg, &["dkim", "list", "--json"], ""));
        assert_eq!(list["keys"][0]["selector"], "s1");
        let table = ok(d, &cfg, &["dkim", "list"], "");
        assert!(
            table.contains(doc["created_at"].as_str().unwrap()),
            "RFC 3339 in the table: {table}"
        );

        let err = fails(d, &cfg, &["dkim", "show", "nope", "example.com"]);
        assert!(
            err.contains("DKIM key nope._domainkey.example.com not found"),
            "{err}"
        );

        ok(
            d,
            &cfg,
            &[
                "dkim",
                "activate",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
            "",
        );
        let active = store.dkim_active_keys().await.unwrap();
        assert_eq!(active.len(), 1, "{url}: activated key signs");
        let err = fails(
            d,
            &cfg,
            &[
                "dkim",
                "activate",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
        );
        assert!(err.contains("already active"), "{err}");
        let err = fails(
            d,
            &cfg,
            &[
                "dkim",
                "delete",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
        );
        assert!(err.contains("retire it first"), "{err}");
        ok(
            d,
            &cfg,
            &[
                "dkim",
                "retire",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
            "",
        );
        let err = fails(
            d,
            &cfg,
            &[
                "dkim",
                "retire",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
        );
        assert!(err.contains("already retired"), "{url}: {err}");
        let err = fails(
            d,
            &cfg,
            &[
                "dkim",
                "activate",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
        );
        assert!(err.contains("is retired"), "{err}");
        ok(
            d,
            &cfg,
            &[
                "dkim",
                "delete",
                "--domain",
                "example.com",
                "--selector",
                "s1",
            ],
            "",
        );
        let list = json(&ok(d, &cfg, &["dkim", "list", "--json"], ""));
        assert_eq!(list["keys"], serde_json::json!([]), "{url}");

        // A key generated without --inactive signs at once, as before.
        ok(
            d,
            &cfg,
            &[
                "dkim",
                "generate",
                "--domain",
                "example.com",
                "--selector",
                "s2",
                "--algorithm",
                "ed25519-sha256",
            ],
            "",
        );
        assert_eq!(store.dkim_active_keys().await.unwrap().len(), 1, "{url}");
    }
}

#[test]
fn dkim_import_help_lists_the_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), None, &["dkim", "import", "--help"], "");
    let (help, _) = out(&o);
    assert!(
        help.contains("rsa-sha256") && help.contains("ed25519-sha256"),
        "{help}"
    );
    let o = run(
        dir.path(),
        None,
        &[
            "dkim",
            "import",
            "--domain",
            "a.example",
            "--selector",
            "s",
            "--key",
            "k.pem",
            "--algorithm",
            "dsa",
        ],
        "",
    );
    let (_, err) = out(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("possible values: rsa-sha256, ed25519-sha256"),
        "{err}"
    );
}
