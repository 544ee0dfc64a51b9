//! Issue #17 item 3 end to end: the HTTP submission API of the real binary,
//! driven with curl over real TLS (`--cacert`), next to SMTP driven with
//! Python's smtplib, on SQLite and PostgreSQL. The same cases go through
//! both front doors and must get the same SMTP reply (the API's HTTP status
//! on top); the good messages arrive at the test upstream DKIM-signed
//! (verified with dkimpy). Also: API tokens (made with the CLI, refused once
//! their credential is disabled), multipart bodies, `GET /v1/messages/{id}`
//! for the sender only, and the OpenAPI document.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// smtplib: one login and one transaction; prints the reply that decided
/// it as JSON (`code`, `enhanced`, `text`).
const SMTP_CLIENT: &str = r#"
import json, smtplib, sys
port, user, pw, frm, to, path = sys.argv[1:7]
msg = open(path, 'rb').read()
def out(code, text):
    text = text.decode() if isinstance(text, bytes) else str(text)
    print(json.dumps({"code": code, "enhanced": text.split(' ', 1)[0], "text": text}))
    sys.exit(0)
s = smtplib.SMTP('127.0.0.1', int(port), timeout=30)
try:
    s.ehlo('client.e2e')
    s.login(user, pw)
    refused = s.sendmail(frm, to.split(','), msg)
    if refused:
        code, text = list(refused.values())[0]
        out(code, text)
    out(250, '2.0.0 queued')
except smtplib.SMTPAuthenticationError as e:
    out(e.smtp_code, e.smtp_error)
except smtplib.SMTPSenderRefused as e:
    out(e.smtp_code, e.smtp_error)
except smtplib.SMTPRecipientsRefused as e:
    code, text = list(e.recipients.values())[0]
    out(code, text)
except smtplib.SMTPDataError as e:
    out(e.smtp_code, e.smtp_error)
"#;

const QUOTA_SMTP: &str = "quota-smtp";
const QUOTA_HTTP: &str = "quota-http";

pub(super) struct Api {
    pub(super) port: u16,
    pub(super) cacert: PathBuf,
    pub(super) dir: PathBuf,
}

/// What curl got: status, JSON body, response headers (lower-case names).
pub(super) struct HttpAnswer {
    pub(super) status: u16,
    pub(super) body: Value,
    pub(super) headers: String,
}

impl Api {
    /// curl with `args` (after the common ones) to `path`.
    pub(super) async fn curl(&self, path: &str, args: &[&str]) -> HttpAnswer {
        let headers = self
            .dir
            .join(format!("headers-{}", uuid::Uuid::new_v4().simple()));
        let url = format!("https://localhost:{}{path}", self.port);
        let out = timeout(
            Duration::from_secs(60),
            Command::new("curl")
                .args(["-sS", "--max-time", "50", "--cacert"])
                .arg(&self.cacert)
                .arg("--resolve")
                .arg(format!("localhost:{}:127.0.0.1", self.port))
                .arg("-D")
                .arg(&headers)
                .args(["-w", "\n%{http_code}"])
                .args(args)
                .arg(&url)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("curl timed out")
        .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "curl {args:?} {url}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = text.rsplit_once('\n').expect("status line");
        HttpAnswer {
            status: status.trim().parse().expect("status"),
            body: serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
            headers: std::fs::read_to_string(&headers)
                .unwrap_or_default()
                .to_ascii_lowercase(),
        }
    }

    /// POST a JSON submission with HTTP Basic credentials.
    pub(super) async fn post_json(&self, user: &str, password: &str, doc: &Value) -> HttpAnswer {
        let file = self
            .dir
            .join(format!("req-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, doc.to_string()).unwrap();
        let data = format!("@{}", file.display());
        let auth = format!("{user}:{password}");
        self.curl(
            "/v1/messages",
            &[
                "-u",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
            ],
        )
        .await
    }
}

/// The SMTP reply smtplib ended with: (code, enhanced code).
async fn smtp_send(
    port: u16,
    dir: &Path,
    user: &str,
    password: &str,
    from: &str,
    to: &[&str],
    message: &str,
) -> (u16, String) {
    let file = dir.join(format!("msg-{}.eml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, message).unwrap();
    let out = timeout(
        Duration::from_secs(60),
        Command::new("python3")
            .arg("-c")
            .arg(SMTP_CLIENT)
            .arg(port.to_string())
            .arg(user)
            .arg(password)
            .arg(from)
            .arg(to.join(","))
            .arg(&file)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("smtplib timed out")
    .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "smtplib printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        doc["code"].as_u64().unwrap() as u16,
        doc["enhanced"].as_str().unwrap().to_string(),
    )
}

fn mail(from_header: &str, subject: &str, pad: usize) -> String {
    format!(
        "From: <{from_header}>\r\nTo: <bob@dest.example>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n{}",
        "x".repeat(pad)
    )
}

/// One case run through both front doors.
struct Case {
    name: &'static str,
    /// SMTP login (user, password); the HTTP side uses the same unless
    /// `http_user` says otherwise.
    user: &'static str,
    password: &'static str,
    http_user: Option<&'static str>,
    from: &'static str,
    from_header: &'static str,
    to: &'static [&'static str],
    pad: usize,
    /// The deciding SMTP reply (code, enhanced), the same for both doors.
    smtp: (u16, &'static str),
    http: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_front_doors_apply_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        both_doors(dir.path(), &url).await;
    }
}

async fn both_doors(dir: &Path, url: &str) {
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let tag = backend_tag(url);
    let api_port = free_port();
    let extra = format!(
        r#"
[smtp]
max_message_size = 20000
max_recipients = 3

[api]
enabled = true
address = "127.0.0.1:{api_port}"
"#
    );
    let mut settings = Settings::new(url, up.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("api-{tag}"), &settings);
    add_user(&files.config).await;
    for q in [QUOTA_SMTP, QUOTA_HTTP] {
        cli(
            &files.config,
            &["user", "add", q, "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        )
        .await;
        cli(&files.config, &["sender", "allow", q, "@example.com"], None).await;
        cli(
            &files.config,
            &["user", "limits", "set", q, "--messages-per-day", "1"],
            None,
        )
        .await;
    }
    let token = cli(
        &files.config,
        &["user", "credential", "add", USER, "app", "--token"],
        None,
    )
    .await
    .trim()
    .to_string();
    assert!(token.starts_with("pgt_"), "{token}");
    let records = cli(
        &files.config,
        &[
            "dkim",
            "generate",
            "--domain",
            "example.com",
            "--selector",
            "api1",
            "--algorithm",
            "ed25519-sha256",
        ],
        None,
    )
    .await;
    let records_file = dir.join(format!("api-records-{tag}.txt"));
    std::fs::write(&records_file, &records).unwrap();
    let node = Serve::start(&mut files).await;
    let api = Api {
        port: api_port,
        cacert: dir.join("cert.pem"),
        dir: dir.to_path_buf(),
    };

    let cases = [
        Case {
            name: "good",
            user: USER,
            password: PASSWORD,
            http_user: None,
            from: FROM,
            from_header: FROM,
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (250, "2.0.0"),
            http: 202,
        },
        Case {
            name: "forbidden-sender",
            user: USER,
            password: PASSWORD,
            http_user: None,
            from: "mallory@evil.example",
            from_header: "mallory@evil.example",
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (553, "5.7.1"),
            http: 403,
        },
        Case {
            name: "header-from",
            user: USER,
            password: PASSWORD,
            http_user: None,
            from: FROM,
            from_header: "boss@evil.example",
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (550, "5.7.1"),
            http: 403,
        },
        Case {
            name: "too-many-rcpts",
            user: USER,
            password: PASSWORD,
            http_user: None,
            from: FROM,
            from_header: FROM,
            to: &[
                "a@dest.example",
                "b@dest.example",
                "c@dest.example",
                "d@dest.example",
            ],
            pad: 0,
            smtp: (452, "4.5.3"),
            http: 422,
        },
        Case {
            name: "oversize",
            user: USER,
            password: PASSWORD,
            http_user: None,
            from: FROM,
            from_header: FROM,
            to: &["bob@dest.example"],
            pad: 25000,
            smtp: (552, "5.3.4"),
            http: 413,
        },
        Case {
            name: "bad-credentials",
            user: USER,
            password: "wrong password",
            http_user: None,
            from: FROM,
            from_header: FROM,
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (535, "5.7.8"),
            http: 401,
        },
        Case {
            name: "quota-first",
            user: QUOTA_SMTP,
            password: PASSWORD,
            http_user: Some(QUOTA_HTTP),
            from: "q@example.com",
            from_header: "q@example.com",
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (250, "2.0.0"),
            http: 202,
        },
        Case {
            name: "quota-exceeded",
            user: QUOTA_SMTP,
            password: PASSWORD,
            http_user: Some(QUOTA_HTTP),
            from: "q@example.com",
            from_header: "q@example.com",
            to: &["bob@dest.example"],
            pad: 0,
            smtp: (451, "4.7.1"),
            http: 429,
        },
    ];
    let mut delivered = Vec::new();
    let mut good_id = String::new();
    for c in &cases {
        let smtp_subject = format!("{}-smtp-{tag}", c.name);
        let got = smtp_send(
            files.smtp_port,
            dir,
            c.user,
            c.password,
            c.from,
            c.to,
            &mail(c.from_header, &smtp_subject, c.pad),
        )
        .await;
        assert_eq!(
            (got.0, got.1.as_str()),
            c.smtp,
            "SMTP door, case {} ({tag})",
            c.name
        );
        // smtplib sends to the recipients RCPT took (RFC 5321 §4.5.3.1.10).
        if c.smtp.0 == 250 || c.name == "too-many-rcpts" {
            delivered.push(smtp_subject);
        }

        let http_subject = format!("{}-http-{tag}", c.name);
        let doc = serde_json::json!({
            "from": c.from,
            "to": c.to,
            "message": mail(c.from_header, &http_subject, c.pad),
        });
        let r = api
            .post_json(c.http_user.unwrap_or(c.user), c.password, &doc)
            .await;
        assert_eq!(
            r.status, c.http,
            "HTTP door, case {} ({tag}): {}",
            c.name, r.body
        );
        if c.http == 202 {
            assert_eq!(r.body["status"], "queued");
            assert!(
                r.headers.contains("location: /v1/messages/"),
                "{}",
                r.headers
            );
            delivered.push(http_subject);
            if c.name == "good" {
                good_id = r.body["id"].as_str().unwrap().to_string();
            }
        } else {
            let e = &r.body["error"];
            assert_eq!(
                (
                    e["smtp_code"].as_u64().unwrap() as u16,
                    e["enhanced_code"].as_str().unwrap()
                ),
                c.smtp,
                "HTTP door's SMTP reply, case {} ({tag}): {}",
                c.name,
                r.body
            );
            assert!(!e["message"].as_str().unwrap().is_empty());
        }
        if c.http == 429 {
            assert!(r.headers.contains("retry-after: "), "{}", r.headers);
        }
        if c.http == 401 {
            assert!(
                r.headers.contains("www-authenticate: basic"),
                "{}",
                r.headers
            );
        }
    }

    // API tokens: accepted while the credential is enabled.
    let bearer = format!("Authorization: Bearer {token}");
    let body = serde_json::json!({
        "from": FROM,
        "to": ["bob@dest.example"],
        "message": format!("From: <{FROM}>\nSubject: token-http-{tag}\n\nLF line ends become CRLF.\n"),
    })
    .to_string();
    let r = api
        .curl(
            "/v1/messages",
            &[
                "-H",
                &bearer,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    delivered.push(format!("token-http-{tag}"));

    // multipart/form-data with a message/rfc822 part.
    let eml = dir.join(format!("multipart-{tag}.eml"));
    std::fs::write(&eml, mail(FROM, &format!("multipart-http-{tag}"), 0)).unwrap();
    let part = format!("message=@{};type=message/rfc822", eml.display());
    let r = api
        .curl(
            "/v1/messages",
            &[
                "-H",
                &bearer,
                "-F",
                &format!("from={FROM}"),
                "-F",
                "to=bob@dest.example",
                "-F",
                &part,
            ],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    delivered.push(format!("multipart-http-{tag}"));

    // A wrong token, and no credentials at all.
    let r = api
        .curl(
            "/v1/messages",
            &[
                "-H",
                "Authorization: Bearer pgt_nope",
                "--data-binary",
                "{}",
            ],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = api.curl("/v1/messages", &["--data-binary", "{}"]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["error"]["smtp_code"], 530);
    // Bad syntax is a 400 naming the problem.
    let r = api
        .curl(
            "/v1/messages",
            &[
                "-H",
                &bearer,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "{\"from\":1}",
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));

    wait_delivered(&up, &delivered, Duration::from_secs(60)).await;
    // Nothing the HTTP door refused was queued.
    let got = received_subjects(&up);
    for c in cases.iter().filter(|c| c.http != 202) {
        let s = format!("{}-http-{tag}", c.name);
        assert!(!got.contains(&s), "{s} was refused but delivered");
    }
    // Both good messages arrived DKIM-signed.
    for subject in [format!("good-smtp-{tag}"), format!("good-http-{tag}")] {
        let msg = up
            .received()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.data).contains(&format!("Subject: {subject}\r\n")))
            .unwrap();
        let msg_file = dir.join(format!("{subject}.eml"));
        std::fs::write(&msg_file, &msg.data).unwrap();
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkim/verify.py"))
            .arg(&records_file)
            .arg(&msg_file)
            .output()
            .await
            .expect("python3");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && report.starts_with("pass\texample.com\tapi1"),
            "{subject}: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token_msg = up
        .received()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.data).contains(&format!("token-http-{tag}")))
        .unwrap();
    let text = String::from_utf8_lossy(&token_msg.data);
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "bare LF stored: {text:?}"
    );
    assert!(
        text.contains("Message-ID:") && text.contains("DKIM-Signature:"),
        "{text}"
    );

    // The status of a message: its sender sees it delivered, others do not.
    let path = format!("/v1/messages/{good_id}");
    let auth = format!("{USER}:{PASSWORD}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.curl(&path, &["-u", &auth]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["recipients"][0]["address"], "bob@dest.example");
        if r.body["recipients"][0]["state"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "never delivered: {}", r.body);
        sleep(Duration::from_millis(200)).await;
    }
    let r = api.curl(&path, &["-H", &bearer]).await;
    assert_eq!(r.status, 200, "the token's user is the sender: {}", r.body);
    let other = format!("{QUOTA_HTTP}:{PASSWORD}");
    let r = api.curl(&path, &["-u", &other]).await;
    assert_eq!(r.status, 404, "another user must not see it: {}", r.body);

    // A disabled credential disables its token at once.
    cli(
        &files.config,
        &["user", "credential", "disable", USER, "app"],
        None,
    )
    .await;
    let r = api
        .curl(
            "/v1/messages",
            &[
                "-H",
                &bearer,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // The token is no SMTP password.
    let got = smtp_send(
        files.smtp_port,
        dir,
        USER,
        &token,
        FROM,
        &["bob@dest.example"],
        &mail(FROM, "token-as-password", 0),
    )
    .await;
    assert_eq!(got.0, 535);
    drop(node);
}

/// docs/openapi.yaml parses (PyYAML), is OpenAPI 3, and documents exactly
/// the routes the server serves; the server serves it too.
#[tokio::test]
async fn openapi_document_parses_and_names_every_route() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(path)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = postgate::http::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Every $ref points at something defined.
    let text = std::fs::read_to_string(path).unwrap();
    for r in text.split("$ref: \"#/").skip(1) {
        let target = r.split('"').next().unwrap();
        let mut node = &doc;
        for key in target.split('/') {
            node = &node[key];
        }
        assert!(!node.is_null(), "dangling $ref {target}");
    }
}
