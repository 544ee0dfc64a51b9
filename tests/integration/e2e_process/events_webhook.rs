//! Issue #17, delivery events to a webhook: a real receiver (Python's
//! http.server) that verifies every signature and can answer 500, be slow
//! or be down; the node is SIGKILLed in the middle. Every recipient's
//! final event (delivered or bounced) still arrives, after its `accepted`
//! (and, for a deferred recipient, its `deferred`), at least once; mail is
//! delivered while the receiver is failing; both backends.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

const SECRET: &str = "whsec-e2e-0123456789abcdef";

/// The receiver: mode from `mode` (ok, 500, slow), every POST's signature
/// checked (a bad one is recorded as BAD and answered 401), each event of
/// an accepted POST appended to `events.jsonl`.
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, os, sys, time
port, secret, dir = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = dict(p.split("=", 1) for p in self.headers.get("X-Postgate-Signature", "").split(","))
        want = hmac.new(secret, sig.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, sig.get("v1", "")) and abs(time.time() - int(sig["t"])) < 300
        mode = open(os.path.join(dir, "mode")).read().strip()
        if not ok:
            open(os.path.join(dir, "bad"), "a").write("BAD\n")
            self.send_response(401); self.end_headers(); return
        if mode == "slow":
            time.sleep(3)
        if mode in ("500", "slow"):
            self.send_response(500); self.end_headers(); return
        with open(os.path.join(dir, "events.jsonl"), "a") as f:
            for e in json.loads(body)["events"]:
                f.write(json.dumps(e) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Receiver {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Receiver {
    fn new(dir: &Path) -> Receiver {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("receiver.py"), RECEIVER).unwrap();
        std::fs::write(dir.join("mode"), "ok").unwrap();
        Receiver {
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
        }
    }

    async fn up(&mut self) {
        let child = Command::new("python3")
            .arg(self.dir.join("receiver.py"))
            .arg(self.port.to_string())
            .arg(SECRET)
            .arg(&self.dir)
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "receiver never listened");
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    fn mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).unwrap();
    }

    /// (kind, recipient) of every event received, in arrival order.
    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn bad_signatures(&self) -> usize {
        std::fs::read_to_string(self.dir.join("bad"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

const N: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_event_reaches_the_webhook_across_sigkill_and_receiver_outages() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        outages(dir.path(), &url).await;
    }
}

async fn outages(dir: &Path, url: &str) {
    let tag = backend_tag(url);
    // r0 is refused for good (bounced), r1 deferred until the restart.
    let mut b = Behavior::new(ServerTls::None);
    b.rcpt_replies
        .insert("r0@dest.example".into(), "550 5.1.1 no such user".into());
    b.rcpt_replies
        .insert("r1@dest.example".into(), "451 4.3.0 try again later".into());
    let up = UpstreamServer::start(b).await;
    let mut receiver = Receiver::new(&dir.join(format!("hook-{tag}")));
    receiver.mode("500");
    receiver.up().await;
    let extra = format!(
        r#"
[events]
prune_interval = "1s"

[[webhook]]
name = "app"
url = "http://127.0.0.1:{}/hook"
secret = "{SECRET}"
timeout = "1s"
max_batch = 3
retry_min = "100ms"
retry_max = "500ms"
"#,
        receiver.port
    );
    let mut settings = Settings::new(url, up.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("events-{tag}"), &settings);
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let mut subjects = Vec::new();
    for i in 0..N {
        let subject = format!("events-{tag}-{i}");
        c.send(&format!("r{i}@dest.example"), &message(&subject))
            .await
            .unwrap();
        subjects.push(subject);
    }
    drop(c);
    // A failing receiver does not hold mail back.
    let delivered: Vec<String> = subjects[2..].to_vec();
    wait_delivered(&up, &delivered, Duration::from_secs(30)).await;
    assert!(receiver.events().is_empty(), "{tag}: 500s were recorded");
    // Slow (past the webhook's timeout), then down, then SIGKILL.
    receiver.mode("slow");
    sleep(Duration::from_secs(2)).await;
    receiver.down().await;
    sleep(Duration::from_millis(500)).await;
    node.crash().await;

    up.set(|b| {
        b.rcpt_replies.remove("r1@dest.example");
    });
    receiver.mode("ok");
    receiver.up().await;
    let node = Serve::start(&mut files).await;
    wait_delivered(&up, &subjects[1..2], Duration::from_secs(30)).await;

    // Every recipient's final event arrives; accepted before it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let finals = loop {
        let events = receiver.events();
        let mut finals: HashMap<String, String> = HashMap::new();
        for e in &events {
            let kind = e["kind"].as_str().unwrap();
            if kind == "delivered" || kind == "bounced" {
                finals.insert(e["recipient"].as_str().unwrap().into(), kind.into());
            }
        }
        if finals.len() == N {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: final events of {} recipients only: {events:?}\n{}",
            finals.len(),
            node.logs()
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(receiver.bad_signatures(), 0, "{tag}");
    let pos = |kind: &str, r: &str| {
        finals
            .iter()
            .position(|e| e["kind"] == kind && e["recipient"] == r)
    };
    for i in 0..N {
        let r = format!("r{i}@dest.example");
        let accepted = pos("accepted", &r).unwrap_or_else(|| panic!("{tag}: no accepted for {r}"));
        let last = if i == 0 { "bounced" } else { "delivered" };
        let fin = pos(last, &r).unwrap_or_else(|| panic!("{tag}: no {last} for {r}"));
        assert!(accepted < fin, "{tag}: {r} out of order: {finals:?}");
        let e = &finals[fin];
        assert_eq!(e["sender"], FROM, "{tag}");
        assert_eq!(e["username"], USER, "{tag}");
    }
    let bounced = &finals[pos("bounced", "r0@dest.example").unwrap()];
    assert!(
        bounced["reply"].as_str().unwrap().contains("550 5.1.1"),
        "{tag}: {bounced}"
    );
    let deferred = pos("deferred", "r1@dest.example").expect("r1 deferred event");
    assert!(deferred < pos("delivered", "r1@dest.example").unwrap());

    // The CLI shows the same events; the backlog drains to 0.
    let mid = finals[pos("delivered", "r3@dest.example").unwrap()]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed: serde_json::Value = serde_json::from_str(
        &cli(
            &files.config,
            &["events", "list", "--json", "--message", &mid],
            None,
        )
        .await,
    )
    .unwrap();
    let kinds: Vec<&str> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["accepted", "delivered"], "{tag}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = reqwest_metrics(files.http).await;
        if metrics.contains("postgate_webhook_backlog_events{webhook=\"app\"} 0") {
            assert!(
                metrics.contains("postgate_webhook_events_sent_total{webhook=\"app\"}"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{tag}: backlog not 0: {metrics}");
        sleep(Duration::from_millis(500)).await;
    }
    receiver.down().await;
    drop(node);
}

/// GET /metrics (plain HTTP/1.0, whole answer).
pub(super) async fn reqwest_metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    out
}

/// `rejected` events at submission: a refused RCPT (SMTP) and a refused
/// API call each produce one event naming the rule, seen by a webhook
/// that subscribed to `rejected` only and by `postgate events list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_rcpt_and_api_are_rejected_events() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        rejected(dir.path(), &url).await;
    }
}

async fn rejected(dir: &Path, url: &str) {
    let tag = backend_tag(url);
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut receiver = Receiver::new(&dir.join(format!("rejected-{tag}")));
    receiver.up().await;
    let api_port = free_port();
    let extra = format!(
        r#"
[smtp]
max_recipients = 1

[api]
enabled = true
address = "127.0.0.1:{api_port}"

[[webhook]]
name = "refusals"
url = "http://127.0.0.1:{}/hook"
secret = "{SECRET}"
events = ["rejected"]
retry_min = "100ms"
retry_max = "500ms"
"#,
        receiver.port
    );
    let mut settings = Settings::new(url, up.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("rejected-{tag}"), &settings);
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{FROM}>")).await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<ok@dest.example>").await.0, 250);
    let (code, text) = c.cmd("RCPT TO:<over@dest.example>").await;
    assert_eq!(code, 452, "{text}");
    drop(c);
    let api = super::api_e2e::Api {
        port: api_port,
        cacert: dir.join("cert.pem"),
        dir: dir.to_path_buf(),
    };
    let r = api
        .post_json(
            USER,
            PASSWORD,
            &serde_json::json!({
                "from": "mallory@evil.example",
                "to": ["victim@dest.example"],
                "message": message("forged"),
            }),
        )
        .await;
    assert_eq!(r.status, 403, "{tag}: {}", r.body);

    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let events = receiver.events();
        if events.len() >= 2 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: webhook got {events:?}\n{}",
            node.logs()
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(receiver.bad_signatures(), 0);
    let brief = |e: &serde_json::Value| {
        (
            e["kind"].as_str().unwrap().to_string(),
            e["rule"].as_str().unwrap_or("").to_string(),
            e["sender"].as_str().unwrap_or("").to_string(),
            e["recipient"].as_str().unwrap_or("").to_string(),
            e["username"].as_str().unwrap_or("").to_string(),
        )
    };
    let want = [
        (
            "rejected".to_string(),
            "max_recipients".to_string(),
            FROM.to_string(),
            "over@dest.example".to_string(),
            USER.to_string(),
        ),
        (
            "rejected".to_string(),
            "sender".to_string(),
            "mallory@evil.example".to_string(),
            String::new(),
            USER.to_string(),
        ),
    ];
    assert_eq!(got.iter().map(brief).collect::<Vec<_>>(), want, "{tag}");
    assert!(got[0]["reply"].as_str().unwrap().starts_with("452 4.5.3 "));
    assert!(got[1]["reply"].as_str().unwrap().starts_with("553 5.7.1 "));
    // The CLI shows the same two (the accepted recipient was never queued).
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&files.config, &["events", "list", "--json"], None).await)
            .unwrap();
    let listed: Vec<_> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(brief)
        .collect();
    assert_eq!(listed, want, "{tag}");
    let metrics = reqwest_metrics(files.http).await;
    assert!(
        metrics.contains("postgate_rejected_events_total{result=\"written\"} 2"),
        "{tag}: {metrics}"
    );
    receiver.down().await;
    drop(node);
}
