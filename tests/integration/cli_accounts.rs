//! The `postgate` binary's account commands, migrations and config checks,
//! run as an operator would, against a real SQLite file and a real PostgreSQL.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::{all_stores, pg_database_url};

/// Runs `postgate -c CONFIG ARGS...` with `stdin`.
fn postgate(config: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .arg("-c")
        .arg(config)
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

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A config file for `url` in a temp dir; the dir keeps it alive.
fn config_for(url: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postgate.toml");
    // Cheap argon2 is not configurable from the CLI on purpose: the real cost is tested here.
    std::fs::write(&path, format!("[store]\nurl = {url:?}\n")).unwrap();
    (dir, path)
}

async fn urls() -> Vec<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("cli.db").display());
    let mut v = vec![(dir, sqlite)];
    if let Some(pg) = pg_database_url().await {
        v.push((tempfile::tempdir().unwrap(), pg));
    }
    v
}

#[tokio::test]
async fn accounts_are_managed_from_the_cli_on_both_backends() {
    for (_keep, url) in urls().await {
        let (_d, cfg) = config_for(&url);
        let o = postgate(&cfg, &["migrate"], "");
        assert!(o.status.success(), "{url}: {:?}", text(&o));
        // A second run is a no-op.
        let o = postgate(&cfg, &["migrate"], "");
        assert!(o.status.success(), "{url}: {:?}", text(&o));

        let o = postgate(
            &cfg,
            &["user", "add", "Alice", "--password-stdin"],
            "s3cret pass\n",
        );
        assert!(o.status.success(), "{url}: {:?}", text(&o));
        let o = postgate(&cfg, &["user", "add", "alice", "--password-stdin"], "x\n");
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o).1.contains("user \"alice\" already exists"),
            "{:?}",
            text(&o)
        );

        let o = postgate(
            &cfg,
            &[
                "user",
                "credential",
                "add",
                "alice",
                "printer",
                "--generate",
            ],
            "",
        );
        assert!(o.status.success(), "{:?}", text(&o));
        let generated = text(&o).0.trim().to_string();
        assert_eq!(
            generated.len(),
            24,
            "generated password printed once: {generated:?}"
        );

        let o = postgate(&cfg, &["sender", "allow", "alice", "@Corp.Example"], "");
        assert!(o.status.success(), "{:?}", text(&o));
        let o = postgate(&cfg, &["sender", "allow", "alice", "not a pattern"], "");
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o).1.contains("invalid sender pattern"),
            "{:?}",
            text(&o)
        );
        let o = postgate(&cfg, &["sender", "list", "alice"], "");
        assert_eq!(text(&o).0, "@corp.example\n");

        let o = postgate(&cfg, &["user", "list"], "");
        let out = text(&o).0;
        assert!(
            out.lines()
                .any(|l| l.starts_with("alice ") && l.contains(" yes ")),
            "{out}"
        );

        // The stored hashes verify: the password typed and the generated one.
        let store = postgate::store::open(&url, &Default::default())
            .await
            .unwrap();
        let rec = store
            .login_lookup("ALICE")
            .await
            .unwrap()
            .expect("alice exists");
        let params = postgate::password::HashParams::default();
        let by_label = |l: &str| {
            rec.credentials
                .iter()
                .find(|c| c.label == l)
                .unwrap()
                .password_hash
                .clone()
        };
        assert!(by_label("default").starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(matches!(
            postgate::password::verify("s3cret pass", &by_label("default"), &params),
            postgate::password::Verification::Match {
                needs_upgrade: false
            }
        ));
        assert!(matches!(
            postgate::password::verify(&generated, &by_label("printer"), &params),
            postgate::password::Verification::Match { .. }
        ));

        let o = postgate(
            &cfg,
            &["user", "passwd", "alice", "--password-stdin"],
            "new pass\n",
        );
        assert!(o.status.success(), "{:?}", text(&o));
        let o = postgate(
            &cfg,
            &["user", "credential", "revoke", "alice", "printer"],
            "",
        );
        assert!(o.status.success(), "{:?}", text(&o));
        let o = postgate(&cfg, &["user", "disable", "alice"], "");
        assert!(o.status.success());
        assert!(
            store.login_lookup("alice").await.unwrap().is_none(),
            "disabled user cannot log in"
        );
        let o = postgate(&cfg, &["user", "delete", "alice"], "");
        assert!(o.status.success());
        let o = postgate(&cfg, &["user", "delete", "alice"], "");
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o).1.contains("user \"alice\" not found"),
            "{:?}",
            text(&o)
        );
    }
}

#[tokio::test]
async fn accounts_can_be_managed_with_plain_sql() {
    // The README's SQL recipe: hash-password, then INSERTs by hand.
    // hash-password uses the configured [auth.hash] parameters.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[auth.hash]\nmemory_kib = 8192\niterations = 3\nparallelism = 1\n",
    )
    .unwrap();
    let o = postgate(&cfg, &["hash-password"], "pl41n sql\n");
    assert!(o.status.success(), "{:?}", text(&o));
    let phc = text(&o).0.trim().to_string();
    assert!(phc.starts_with("$argon2id$v=19$m=8192,t=3,p=1$"), "{phc}");
    for t in all_stores().await {
        let sql = [
            "INSERT INTO users (username) VALUES ('carol')".to_string(),
            format!("INSERT INTO credentials (user_id, label, password_hash) SELECT id, 'default', '{phc}' FROM users WHERE username = 'carol'"),
            "INSERT INTO sender_permissions (user_id, pattern) SELECT id, 'carol@example.com' FROM users WHERE username = 'carol'".to_string(),
        ];
        run_sql(&t.url, &sql).await;
        let rec = t
            .store
            .login_lookup("Carol")
            .await
            .unwrap()
            .expect("carol via SQL");
        assert_eq!(rec.senders, vec!["carol@example.com"]);
        assert!(matches!(
            postgate::password::verify(
                "pl41n sql",
                &rec.credentials[0].password_hash,
                &Default::default()
            ),
            postgate::password::Verification::Match { .. }
        ));
        // Mixed-case usernames are refused by the schema itself, not only by the CLI.
        assert!(
            try_sql(&t.url, "INSERT INTO users (username) VALUES ('Dave')")
                .await
                .is_err(),
            "{}",
            t.backend
        );
    }
}

async fn try_sql(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await?;
        sqlx::query(sql).execute(&mut c).await.map(|_| ())
    } else {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::query(sql).execute(&mut c).await.map(|_| ())
    }
}

async fn run_sql(url: &str, statements: &[String]) {
    for s in statements {
        try_sql(url, s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[test]
fn check_config_prints_redacted_config_and_exits_2_when_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[store]\nurl = { env = \"PG_TEST_URL_SECRET\" }\n\n[[smtp.listener]]\naddress = \"127.0.0.1:2587\"\nmode = \"plain\"\n\n[[upstream]]\nname = \"mta\"\nhost = \"127.0.0.1\"\npassword = \"upstream-secret-value\"\nusername = \"u\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .args(["-c", good.to_str().unwrap(), "check-config"])
        .env("PG_TEST_URL_SECRET", "postgres://app:topsecret@db/postgate")
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let out = text(&o).0;
    assert!(!out.contains("topsecret"), "{out}");
    assert!(out.contains("from env PG_TEST_URL_SECRET"), "{out}");
    assert!(!out.contains("upstream-secret-value"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nhostname = \"relay\"\n\n[store]\nmax_conections = 3\n",
    )
    .unwrap();
    let o = postgate(&bad, &["check-config"], "");
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("bad.toml:5:1: store.max_conections: unknown field"),
        "{err}"
    );
}

#[test]
fn unreachable_database_is_a_one_line_error() {
    let (_d, cfg) = config_for("postgres://app:hunter2@127.0.0.1:1/postgate");
    let o = postgate(&cfg, &["user", "list"], "");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to postgres://app:***@127.0.0.1:1/postgate"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
