//! The one-command benchmark's driver (issue #16 items 5 and 6), run by
//! `bench/perf.sh`, which builds it and the release binary and starts a
//! throwaway PostgreSQL. For every cell and run it makes a fresh store,
//! prepares it with the binary's own CLI (`migrate`, `user add`, `sender
//! allow`, `dkim generate`), starts 1-3 real `postgate serve` processes,
//! and drives them with C concurrent SMTP sessions: STARTTLS + AUTH PLAIN,
//! 50 messages per session, no pipelining (MAIL, RCPT, DATA, body, each
//! waiting for its reply). postgate signs (RSA-2048, Ed25519 or both),
//! commits, answers 250, and delivers over STARTTLS + AUTH PLAIN to the
//! sink in this process, which records every Message-ID it receives.
//!
//! ```text
//! perf --bench --bin PATH [--baseline PATH] [--pg URL --pg-data DIR]
//!      [--duration 60] [--warmup 10] [--runs 3] [--drain 120]
//!      [--cells SUBSTR,...] [--quick] [--out FILE.md]
//! ```
//! `PERF_TRACE=1` prints every command's round trip (debugging).
//!
//! Per run: a warm-up at full load (not counted), then the timed window.
//! Figures: messages answered 250 in the window per second (submitted),
//! new Message-IDs at the sink in the window per second (end to end), the
//! end-of-data to 250 latency of the window's messages, accepted minus
//! delivered at the window's end (queued), lost (250 but never at the sink
//! once drained) and duplicated (at the sink more than once), CPU seconds
//! in the window per 1,000 messages delivered in it (postgate processes;
//! the whole PostgreSQL cluster from /proc), and PostgreSQL deadlocks of the
//! run's database (`pg_stat_database`) over the whole run.
//!
//! Issue #17 adds two kinds of cells: `-http` (the same messages through
//! `POST /v1/messages`, `perf/http.rs`) and `-events` (`[events]` on and a
//! `[[webhook]]` to the receiver in `perf/hook.rs`, which verifies every
//! signature and counts the events), each run next to the plain SMTP cell
//! of the same backend, C and size, in the same round.

#[path = "perf/compare.rs"]
mod compare;
#[path = "perf/hook.rs"]
mod hook;
#[path = "perf/http.rs"]
mod http;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub(crate) const PASSWORD: &str = "bench-password-123";
const PER_SESSION: u32 = 50;
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(60);

struct Opts {
    bins: Vec<(String, PathBuf)>,
    pg: Option<String>,
    pg_data: Option<PathBuf>,
    duration: f64,
    warmup: f64,
    runs: usize,
    drain: f64,
    cells: Vec<String>,
    out: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        bins: Vec::new(),
        pg: None,
        pg_data: None,
        duration: 60.0,
        warmup: 10.0,
        runs: 3,
        drain: 120.0,
        cells: Vec::new(),
        out: None,
    };
    let mut baseline = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        let num = |s: String| -> f64 {
            s.parse()
                .unwrap_or_else(|_| die(&format!("bad number {s}")))
        };
        match k.as_str() {
            "--bin" => o.bins.push(labelled(v())),
            "--baseline" => baseline = Some(labelled(v())),
            "--pg" => o.pg = Some(v().trim_end_matches('/').to_string()),
            "--pg-data" => o.pg_data = Some(v().into()),
            "--duration" => o.duration = num(v()),
            "--warmup" => o.warmup = num(v()),
            "--runs" => o.runs = num(v()) as usize,
            "--drain" => o.drain = num(v()),
            "--cells" => o.cells = v().split(',').map(str::to_string).collect(),
            "--out" => o.out = Some(v().into()),
            "--quick" => {
                o.duration = 5.0;
                o.warmup = 2.0;
                o.runs = 1;
                o.drain = 30.0;
            }
            "--bench" => {}
            other => die(&format!("unknown argument {other}")),
        }
    }
    if o.bins.is_empty() {
        die("--bin PATH_TO_POSTGATE is required");
    }
    o.bins.extend(baseline);
    if o.bins.len() == 2 && o.bins[0].0 == o.bins[1].0 {
        o.bins[1].0.push_str(" (baseline)");
    }
    if o.runs == 0 || o.duration <= 0.0 {
        die("--runs and --duration must be positive");
    }
    o
}

fn labelled(path: String) -> (String, PathBuf) {
    let p = PathBuf::from(path);
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
    (name.unwrap_or_else(|| p.display().to_string()), p)
}

fn die(msg: &str) -> ! {
    eprintln!("perf: {msg}");
    std::process::exit(2)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    Smtp,
    /// `POST /v1/messages` over HTTPS.
    Http,
}

#[derive(Clone)]
struct Cell {
    pg: bool,
    c: usize,
    size: usize,
    dkim: &'static str,
    nodes: usize,
    front: Front,
    /// `[events]` on with a `[[webhook]]` to the driver's receiver.
    events: bool,
}

impl Cell {
    fn name(&self) -> String {
        format!(
            "{}-c{}-{}k-{}-n{}{}{}",
            if self.pg { "pg" } else { "sqlite" },
            self.c,
            self.size / 1024,
            self.dkim,
            self.nodes,
            if self.front == Front::Http {
                "-http"
            } else {
                ""
            },
            if self.events { "-events" } else { "" },
        )
    }

    /// The plain SMTP cell (events off) this one is compared with.
    fn twin(&self) -> Cell {
        Cell {
            front: Front::Smtp,
            events: false,
            ..self.clone()
        }
    }
}

/// Every cell, in the order they run within one round.
fn all_cells() -> Vec<Cell> {
    let cell = |pg, c, size, dkim, nodes| Cell {
        pg,
        c,
        size,
        dkim,
        nodes,
        front: Front::Smtp,
        events: false,
    };
    let mut v = Vec::new();
    for pg in [false, true] {
        // Issue #17: each plain cell, then the same through HTTP and with
        // events and a webhook on, in the same round (alternated run by run).
        for c in [10, 100] {
            let plain = cell(pg, c, 2048, "rsa", 1);
            v.push(plain.clone());
            v.push(Cell {
                front: Front::Http,
                ..plain.clone()
            });
            v.push(Cell {
                events: true,
                ..plain
            });
        }
        v.push(cell(pg, 100, 51200, "rsa", 1));
        v.push(cell(pg, 100, 2048, "ed25519", 1));
        v.push(cell(pg, 100, 2048, "dual", 1));
    }
    // Scale-out: 2 and 3 processes on one PostgreSQL database.
    v.push(cell(true, 100, 2048, "rsa", 2));
    v.push(cell(true, 100, 2048, "rsa", 3));
    v
}

// ---------------------------------------------------------------- sink

/// The fast sink: STARTTLS, AUTH PLAIN (any password), pipelining; counts
/// every Message-ID it receives.
struct Sink {
    port: u16,
    seen: Arc<Mutex<HashMap<Box<str>, u32>>>,
    distinct: Arc<AtomicU64>,
}

impl Sink {
    fn reset(&self) {
        self.seen.lock().unwrap().clear();
        self.distinct.store(0, Ordering::SeqCst);
    }
    fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::SeqCst)
    }
}

async fn start_sink(acceptor: tokio_rustls::TlsAcceptor) -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let distinct = Arc::new(AtomicU64::new(0));
    let (s, d) = (seen.clone(), distinct.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, s, d) = (acceptor.clone(), s.clone(), d.clone());
            tokio::spawn(async move {
                let _ = sink_conn(tcp, acceptor, s, d).await;
            });
        }
    });
    Sink {
        port,
        seen,
        distinct,
    }
}

async fn sink_conn(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    seen: Arc<Mutex<HashMap<Box<str>, u32>>>,
    distinct: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(tcp);
    r.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with(b"EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
        } else if upper.starts_with(b"STARTTLS") {
            r.get_mut().write_all(b"220 go\r\n").await?;
            break;
        } else if upper.starts_with(b"QUIT") {
            r.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"530 5.7.0 STARTTLS first\r\n"
        };
        r.get_mut().write_all(reply).await?;
    }
    let tls = acceptor.accept(r.into_inner()).await?;
    let mut r = BufReader::new(tls);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Answer a pipelined group at once: flush when nothing more is buffered.
        if !out.is_empty() && r.buffer().is_empty() {
            r.get_mut().write_all(&out).await?;
            r.get_mut().flush().await?;
            out.clear();
        }
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with(b"EHLO") {
            out.extend_from_slice(
                b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH PLAIN\r\n",
            );
        } else if upper.starts_with(b"AUTH") {
            if upper.trim_ascii_end() == b"AUTH PLAIN" {
                r.get_mut().write_all(b"334 \r\n").await?;
                line.clear();
                r.read_until(b'\n', &mut line).await?;
            }
            out.extend_from_slice(b"235 2.7.0 ok\r\n");
        } else if upper.starts_with(b"DATA") {
            r.get_mut().write_all(&out).await?;
            r.get_mut().write_all(b"354 go\r\n").await?;
            r.get_mut().flush().await?;
            out.clear();
            let mut id: Option<Box<str>> = None;
            let mut in_header = true;
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                if in_header {
                    if line == b"\r\n" {
                        in_header = false;
                    } else if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
                        let v = String::from_utf8_lossy(&line[11..]);
                        id = Some(v.trim().into());
                    }
                }
            }
            if let Some(id) = id {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(id).or_insert(0);
                *n += 1;
                if *n == 1 {
                    distinct.fetch_add(1, Ordering::SeqCst);
                }
            }
            out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if upper.starts_with(b"QUIT") {
            out.extend_from_slice(b"221 bye\r\n");
            r.get_mut().write_all(&out).await?;
            return Ok(());
        } else {
            out.extend_from_slice(b"250 ok\r\n");
        }
    }
}

// ---------------------------------------------------------------- load

/// One accepted message: when its 250 came, how long after the end of data,
/// its number, its queue id (from `queued as ID` or the 202's `id`).
pub(crate) struct Accepted {
    pub(crate) at: Instant,
    pub(crate) latency: Duration,
    pub(crate) seq: u32,
    pub(crate) queue_id: Box<str>,
}

pub(crate) struct Load {
    pub(crate) stop: AtomicBool,
    pub(crate) accepted: AtomicU64,
    pub(crate) errors: AtomicU64,
}

pub(crate) struct TaskOut {
    pub(crate) accepted: Vec<Accepted>,
    /// Messages whose data was sent but whose reply never came (may be delivered).
    pub(crate) uncertain: Vec<u32>,
}

pub(crate) fn message_id(tag: &str, task: usize, seq: u32) -> String {
    format!("<{tag}.{task}.{seq}@perf.bench>")
}

async fn read_reply<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Result<(u16, String), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, r.read_line(&mut line))
            .await
            .map_err(|_| "reply timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {text:?}"));
        }
        text.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text));
        }
    }
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    cmd: &[u8],
    want: u16,
) -> Result<(), String> {
    let t = Instant::now();
    r.get_mut()
        .write_all(cmd)
        .await
        .map_err(|e| e.to_string())?;
    r.get_mut().flush().await.map_err(|e| e.to_string())?;
    let (code, text) = read_reply(r).await?;
    if std::env::var_os("PERF_TRACE").is_some() {
        eprintln!("{:?} {}", t.elapsed(), String::from_utf8_lossy(cmd).trim());
    }
    if code != want {
        return Err(format!(
            "{} -> {}",
            String::from_utf8_lossy(cmd).trim(),
            text.trim()
        ));
    }
    Ok(())
}

/// One session: connect, STARTTLS, AUTH PLAIN, up to 50 messages, QUIT.
#[allow(clippy::too_many_arguments)]
async fn session(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    tag: &str,
    task: usize,
    seq: &mut u32,
    body: &Bytes,
    load: &Load,
    out: &mut TaskOut,
) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut r = BufReader::new(tcp);
    let (code, text) = read_reply(&mut r).await?;
    if code != 220 {
        return Err(format!("greeting {text}"));
    }
    command(&mut r, b"EHLO perf.bench\r\n", 250).await?;
    command(&mut r, b"STARTTLS\r\n", 220).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tls
        .connect(name, r.into_inner())
        .await
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    command(&mut r, b"EHLO perf.bench\r\n", 250).await?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0bench\0{PASSWORD}"));
    command(&mut r, format!("AUTH PLAIN {auth}\r\n").as_bytes(), 235).await?;
    for _ in 0..PER_SESSION {
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        *seq += 1;
        command(&mut r, b"MAIL FROM:<bench@example.com>\r\n", 250).await?;
        command(&mut r, b"RCPT TO:<someone@example.net>\r\n", 250).await?;
        command(&mut r, b"DATA\r\n", 354).await?;
        let w = r.get_mut();
        let head = format!("Message-ID: {}\r\n", message_id(tag, task, *seq));
        let sent = async {
            w.write_all(head.as_bytes()).await?;
            w.write_all(body).await?;
            w.write_all(b".\r\n").await?;
            w.flush().await
        };
        sent.await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        let reply = read_reply(&mut r).await;
        match reply {
            Ok((250, text)) => {
                let latency = t.elapsed();
                load.accepted.fetch_add(1, Ordering::SeqCst);
                let id = text.trim().rsplit_once("queued as ").map(|(_, id)| id);
                out.accepted.push(Accepted {
                    at: Instant::now(),
                    latency,
                    seq: *seq,
                    queue_id: id.unwrap_or("").into(),
                });
            }
            Ok((_, text)) => return Err(format!("end of data -> {}", text.trim())),
            Err(e) => {
                out.uncertain.push(*seq);
                return Err(e);
            }
        }
    }
    let _ = command(&mut r, b"QUIT\r\n", 221).await;
    Ok(())
}

async fn load_task(
    ports: Arc<Vec<u16>>,
    tls: tokio_rustls::TlsConnector,
    tag: Arc<str>,
    task: usize,
    body: Bytes,
    load: Arc<Load>,
) -> TaskOut {
    let mut out = TaskOut {
        accepted: Vec::new(),
        uncertain: Vec::new(),
    };
    let mut seq = 0u32;
    let port = ports[task % ports.len()];
    while !load.stop.load(Ordering::Relaxed) {
        if let Err(e) = session(port, &tls, &tag, task, &mut seq, &body, &load, &mut out).await {
            if load.errors.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("perf: session {task}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// The message after its Message-ID line: From, To, Subject, text to `size` bytes.
fn body(size: usize) -> Bytes {
    let mut b =
        b"From: <bench@example.com>\r\nTo: <someone@example.net>\r\nSubject: perf\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while b.len() + line.len() <= size.saturating_sub(40) {
        b.extend_from_slice(line);
    }
    Bytes::from(b)
}

// ---------------------------------------------------------------- processes

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, own utime+stime, waited-for children's cutime+cstime) in ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU ticks of a PostgreSQL cluster: the postmaster, its live children,
/// and the children that already exited (the postmaster's cutime/cstime).
fn pg_ticks(postmaster: u32) -> u64 {
    let Some((_, own, dead)) = proc_stat(postmaster) else {
        return 0;
    };
    let mut total = own + dead;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, own, dead)) = proc_stat(pid) {
                if ppid == postmaster {
                    total += own + dead;
                }
            }
        }
    }
    total
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    s.lines().next()?.trim().parse().ok()
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Runs `bin --config cfg ARGS`, with `stdin` if given; Err with its output on failure.
fn cli(bin: &Path, cfg: &Path, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if let Some(input) = stdin {
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "postgate {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A node's listeners: SMTP, the operations server (`/metrics`), the API.
struct NodePorts {
    smtp: u16,
    http: u16,
    api: u16,
}

/// The `[api]` section (`-http` cells) and `[events]` + `[[webhook]]`
/// (`-events` cells) added to [`config_text`].
fn cell_config(cell: &Cell, ports: &NodePorts, hook_port: u16) -> String {
    let mut s = String::new();
    if cell.front == Front::Http {
        s.push_str(&format!(
            "\n[api]\nenabled = true\naddress = \"127.0.0.1:{}\"\n",
            ports.api
        ));
    }
    if cell.events {
        s.push_str(&format!(
            r#"
[events]
enabled = true

[[webhook]]
name = "bench"
url = "http://127.0.0.1:{hook_port}/hook"
secret = "{secret}"
"#,
            secret = hook::SECRET
        ));
    }
    s
}

fn config_text(url: &str, ports: &NodePorts, sink_port: u16, cert: &Path, key: &Path) -> String {
    let smtp_port = ports.smtp;
    let http_port = ports.http;
    format!(
        r#"[server]
hostname = "localhost"
shutdown_grace = "5s"

[store]
url = "{url}"

[tls]
cert = "{c}"
key = "{k}"

[smtp]
max_connections_per_ip = 100000

[[smtp.listener]]
address = "127.0.0.1:{smtp_port}"
mode = "starttls"

[http]
address = "127.0.0.1:{http_port}"

# One user from one address, C logins at once: lift the per-user and per-IP
# limits, the AUTH tarpit (in-flight logins count as failures) and lockouts.
[limits]
auth_tarpit_after = 0
auth_lockout_per_user = 100000000
auth_lockout_per_ip = 100000000
messages_per_minute = 100000000
messages_per_hour = 100000000
messages_per_day = 100000000
recipients_per_day = 100000000
concurrent_sessions = 100000
ip_connections_per_minute = 100000000
ip_concurrent_connections = 100000

[queue]
workers = 32
poll_interval = "20ms"

[[upstream]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
tls = "starttls"
ca_file = "{c}"
tls_server_name = "localhost"
username = "relay"
password = "sink-password"
max_connections = 64
max_messages_per_connection = 1000
"#,
        c = cert.display(),
        k = key.display(),
    )
}

fn stop_nodes(nodes: &mut [Child]) {
    for n in nodes.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(n.id().to_string())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in nodes.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = n.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = n.kill();
        let _ = n.wait();
    }
}

// ---------------------------------------------------------------- one run

#[derive(Default, Clone)]
struct RunResult {
    failed: Option<String>,
    submitted: f64,
    e2e: f64,
    p50_ms: f64,
    p99_ms: f64,
    queued: u64,
    lost: u64,
    dup: u64,
    extra: u64,
    errors: u64,
    /// postgate processes that exited before the driver stopped them.
    exited: usize,
    drained: bool,
    cpu_postgate: Option<f64>,
    cpu_pg: Option<f64>,
    cpu_driver: Option<f64>,
    deadlocks: Option<i64>,
    top: Vec<String>,
    /// Load averages (1/5/15 min) when the run started and ended.
    load_start: String,
    load: String,
    /// `-events` cells: what the webhook receiver got.
    events: Option<EventStats>,
}

/// The webhook side of one `-events` run.
#[derive(Default, Clone)]
struct EventStats {
    /// `postgate_webhook_backlog_events` when the window closed (the node
    /// refreshes it every 5 s while sending, so it may lag that much).
    backlog: Option<f64>,
    /// Messages at the sink when the window closed minus messages whose
    /// `delivered` event had reached the receiver by then.
    lag: u64,
    /// Accepted messages (each has one recipient): one `accepted` and one
    /// `delivered` event expected for each.
    expected: u64,
    /// Accepted messages with no `delivered` / `accepted` event received
    /// by the end of the wait after draining.
    missing_delivered: u64,
    missing_accepted: u64,
    /// Events received more than once (at least once means this may be > 0).
    dup: u64,
    /// Events received in all (any kind).
    received: u64,
    /// POSTs refused by the receiver (bad signature or body).
    bad: u64,
    /// Seconds from the sink having every message to the receiver having
    /// every `delivered` event (the wait is bounded by `--drain`).
    settle_s: f64,
}

struct Env {
    opts: Opts,
    sink: Sink,
    cert: PathBuf,
    key: PathBuf,
    connector: tokio_rustls::TlsConnector,
    dir: tempfile::TempDir,
    counter: AtomicU64,
    hook: hook::Hook,
}

async fn run_once(env: &Env, cell: &Cell, bin: &Path) -> RunResult {
    let k = env.counter.fetch_add(1, Ordering::SeqCst);
    let tag = format!("r{}x{k}", std::process::id());
    let rundir = env.dir.path().join(&tag);
    std::fs::create_dir_all(&rundir).unwrap();
    let mut db_name = None;
    let url = if cell.pg {
        let server = env.opts.pg.as_deref().unwrap();
        let name = format!("perf_{}_{k}", std::process::id());
        if let Err(e) = psql(
            &format!("{server}/postgres"),
            &format!("CREATE DATABASE {name}"),
        ) {
            return failed(e);
        }
        let url = format!("{server}/{name}");
        let _ = psql(&url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        db_name = Some(name);
        url
    } else {
        format!("sqlite://{}", rundir.join("queue.db").display())
    };
    let load_start = loadavg();
    let mut result = run_in_store(env, cell, bin, &url, &tag, &rundir, db_name.as_deref()).await;
    result.load_start = load_start;
    if let Some(name) = db_name {
        let server = env.opts.pg.as_deref().unwrap();
        let _ = psql(
            &format!("{server}/postgres"),
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    }
    let _ = std::fs::remove_dir_all(&rundir);
    result
}

fn failed(e: String) -> RunResult {
    eprintln!("perf: run failed: {e}");
    RunResult {
        failed: Some(e),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_in_store(
    env: &Env,
    cell: &Cell,
    bin: &Path,
    url: &str,
    tag: &str,
    rundir: &Path,
    db: Option<&str>,
) -> RunResult {
    let o = &env.opts;
    let node_ports: Vec<NodePorts> = (0..cell.nodes)
        .map(|_| NodePorts {
            smtp: free_port(),
            http: free_port(),
            api: free_port(),
        })
        .collect();
    let cfgs: Vec<PathBuf> = node_ports
        .iter()
        .enumerate()
        .map(|(i, ports)| {
            let p = rundir.join(format!("node{i}.toml"));
            let mut text = config_text(url, ports, env.sink.port, &env.cert, &env.key);
            text.push_str(&cell_config(cell, ports, env.hook.port));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    // The port the load goes to: SMTP, or the API for `-http` cells.
    let ports: Vec<u16> = node_ports
        .iter()
        .map(|p| match cell.front {
            Front::Smtp => p.smtp,
            Front::Http => p.api,
        })
        .collect();
    let mut setup: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["migrate"], None),
        (
            vec!["user", "add", "bench", "--password-stdin"],
            Some("bench-password-123\n"),
        ),
        (vec!["sender", "allow", "bench", "@example.com"], None),
    ];
    if cell.dkim == "rsa" || cell.dkim == "dual" {
        setup.push((
            vec![
                "dkim",
                "generate",
                "--domain",
                "example.com",
                "--selector",
                "perf-rsa",
                "--algorithm",
                "rsa-sha256",
            ],
            None,
        ));
    }
    if cell.dkim == "ed25519" || cell.dkim == "dual" {
        setup.push((
            vec![
                "dkim",
                "generate",
                "--domain",
                "example.com",
                "--selector",
                "perf-ed",
                "--algorithm",
                "ed25519-sha256",
            ],
            None,
        ));
    }
    for (args, stdin) in &setup {
        if let Err(e) = cli(bin, &cfgs[0], args, *stdin) {
            return failed(e);
        }
    }
    let deadlocks_before = db.and_then(|d| deadlocks(o.pg.as_deref().unwrap(), d));
    let mut nodes = Vec::new();
    for (i, cfg) in cfgs.iter().enumerate() {
        let log = std::fs::File::create(rundir.join(format!("node{i}.log"))).unwrap();
        match Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .arg("serve")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
        {
            Ok(c) => nodes.push(c),
            Err(e) => {
                stop_nodes(&mut nodes);
                return failed(format!("start {}: {e}", bin.display()));
            }
        }
    }
    for (i, port) in ports.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", *port)).await.is_err() {
            if Instant::now() > deadline {
                stop_nodes(&mut nodes);
                let log = std::fs::read_to_string(rundir.join(format!("node{i}.log")))
                    .unwrap_or_default();
                return failed(format!("node {i} did not listen on {port}: {}", tail(&log)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let node_pids: Vec<u32> = nodes.iter().map(|n| n.id()).collect();
    let node_ticks = || -> u64 {
        node_pids
            .iter()
            .filter_map(|p| proc_stat(*p))
            .map(|s| s.1)
            .sum()
    };
    let postmaster = if cell.pg {
        o.pg_data.as_deref().and_then(postmaster_pid)
    } else {
        None
    };

    env.sink.reset();
    env.hook.reset();
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let ports = Arc::new(ports);
    let tag_arc: Arc<str> = tag.into();
    let body = body(cell.size);
    let tasks: Vec<_> = (0..cell.c)
        .map(|t| match cell.front {
            Front::Smtp => tokio::spawn(load_task(
                ports.clone(),
                env.connector.clone(),
                tag_arc.clone(),
                t,
                body.clone(),
                load.clone(),
            )),
            Front::Http => tokio::spawn(http::task(
                ports[t % ports.len()],
                env.connector.clone(),
                tag_arc.clone(),
                t,
                body.clone(),
                load.clone(),
            )),
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    if let Some(d) = db {
        let _ = psql(
            url,
            &format!("SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = '{d}'), 0)"),
        );
    }
    let t0 = Instant::now();
    let me = std::process::id();
    let own = || proc_stat(me).map_or(0, |s| s.1);
    let (d0, n0, p0, m0) = (
        env.sink.distinct(),
        node_ticks(),
        postmaster.map(pg_ticks),
        own(),
    );
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    let t1 = Instant::now();
    let (d1, n1, p1, m1) = (
        env.sink.distinct(),
        node_ticks(),
        postmaster.map(pg_ticks),
        own(),
    );
    let accepted_at_end = load.accepted.load(Ordering::SeqCst);
    let window = t1.duration_since(t0).as_secs_f64();
    let mut events = cell.events.then(|| EventStats {
        backlog: metric(
            node_ports[0].http,
            "postgate_webhook_backlog_events{",
            "webhook=\"bench\"",
        ),
        lag: d1.saturating_sub(env.hook.delivered() as u64),
        ..Default::default()
    });
    let top = match db {
        Some(d) => top_statements(url, d),
        None => Vec::new(),
    };
    load.stop.store(true, Ordering::SeqCst);
    let mut outs = Vec::new();
    for t in tasks {
        if let Ok(out) = t.await {
            outs.push(out);
        }
    }
    // Drain: wait until every accepted message reached the sink.
    let total: u64 = outs.iter().map(|o| o.accepted.len() as u64).sum();
    let deadline = Instant::now() + Duration::from_secs_f64(o.drain);
    let mut drained = false;
    while Instant::now() < deadline {
        if env.sink.distinct() >= total {
            drained = true;
            // Give late duplicates a moment to show up.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(ev) = events.as_mut() {
        webhook_accounting(env, &outs, deadline, ev).await;
    }
    let mut exited = 0;
    for n in nodes.iter_mut() {
        if let Ok(Some(_)) = n.try_wait() {
            exited += 1;
        }
    }
    stop_nodes(&mut nodes);
    let dl = match (db, deadlocks_before) {
        (Some(d), Some(before)) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            deadlocks(o.pg.as_deref().unwrap(), d).map(|after| after - before)
        }
        _ => None,
    };

    // Accounting by Message-ID.
    let seen = env.sink.seen.lock().unwrap().clone();
    let mut expected: HashSet<String> = HashSet::new();
    let mut uncertain: HashSet<String> = HashSet::new();
    let mut lat = Vec::new();
    for (task, out) in outs.iter().enumerate() {
        for a in &out.accepted {
            expected.insert(message_id(tag, task, a.seq));
            if a.at >= t0 && a.at <= t1 {
                lat.push(a.latency);
            }
        }
        for s in &out.uncertain {
            uncertain.insert(message_id(tag, task, *s));
        }
    }
    lat.sort();
    let lost = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count() as u64;
    let dup = seen.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    let extra = seen
        .keys()
        .filter(|id| !expected.contains(&**id as &str) && !uncertain.contains(&**id as &str))
        .count() as u64;
    let delivered = (d1 - d0) as f64;
    let per_k =
        |ticks: u64| (delivered > 0.0).then(|| ticks as f64 / clk_tck() / delivered * 1000.0);
    RunResult {
        failed: None,
        submitted: lat.len() as f64 / window,
        e2e: delivered / window,
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        queued: accepted_at_end.saturating_sub(d1),
        lost: if drained { lost } else { 0 },
        dup,
        extra,
        errors: load.errors.load(Ordering::SeqCst),
        exited,
        drained: drained || lost == 0,
        cpu_postgate: per_k(n1.saturating_sub(n0)),
        cpu_pg: match (p0, p1) {
            (Some(a), Some(b)) => per_k(b.saturating_sub(a)),
            _ => None,
        },
        cpu_driver: per_k(m1.saturating_sub(m0)),
        deadlocks: dl,
        top,
        load_start: String::new(),
        load: loadavg(),
        events,
    }
}

/// Waits (until `deadline`, the drain's) for a `delivered` event of every
/// accepted message, then counts what the receiver got against it.
async fn webhook_accounting(env: &Env, outs: &[TaskOut], deadline: Instant, ev: &mut EventStats) {
    let ids: Vec<&str> = outs
        .iter()
        .flat_map(|o| o.accepted.iter().map(|a| &*a.queue_id))
        .collect();
    let t = Instant::now();
    loop {
        let all = {
            let seen = env.hook.seen.lock().unwrap();
            ids.iter().all(|id| seen.delivered.contains_key(*id))
        };
        if all || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ev.settle_s = t.elapsed().as_secs_f64();
    // Late duplicates (a batch re-sent after a lost answer) show up here.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = env.hook.seen.lock().unwrap();
    ev.expected = ids.len() as u64;
    ev.missing_delivered = ids
        .iter()
        .filter(|id| !seen.delivered.contains_key(**id))
        .count() as u64;
    ev.missing_accepted = ids
        .iter()
        .filter(|id| !seen.accepted.contains_key(**id))
        .count() as u64;
    let over = |m: &HashMap<Box<str>, u32>| -> u64 {
        m.values().map(|n| u64::from(n.saturating_sub(1))).sum()
    };
    ev.dup = over(&seen.delivered) + over(&seen.accepted);
    ev.received = seen.delivered.values().map(|n| u64::from(*n)).sum::<u64>()
        + seen.accepted.values().map(|n| u64::from(*n)).sum::<u64>()
        + seen.other;
    ev.bad = seen.bad;
}

/// The value of the first sample from a node's `/metrics` whose line starts
/// with `prefix` and contains `label`.
fn metric(port: u16, prefix: &str, label: &str) -> Option<f64> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

fn deadlocks(server: &str, db: &str) -> Option<i64> {
    psql(
        &format!("{server}/postgres"),
        &format!("SELECT deadlocks FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .ok()
    .and_then(|s| s.parse().ok())
}

fn top_statements(url: &str, db: &str) -> Vec<String> {
    let sql = format!(
        "SELECT calls || '|' || round(total_exec_time::numeric, 0) || '|' || round(mean_exec_time::numeric, 3) \
         || '|' || left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{db}') \
         AND query NOT LIKE '%pg_stat_statements%' \
         ORDER BY total_exec_time DESC LIMIT 5"
    );
    psql(url, &sql)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- report

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((m, v[0], v[v.len() - 1]))
}

fn rate(v: Vec<f64>) -> String {
    match median(v) {
        None => "-".into(),
        Some((m, lo, hi)) if lo == hi => thousands(m),
        Some((m, lo, hi)) => format!("{} ({}-{})", thousands(m), thousands(lo), thousands(hi)),
    }
}

fn plain(v: Vec<f64>, digits: usize) -> String {
    match median(v) {
        None => "-".into(),
        Some((m, _, _)) => format!("{m:.digits$}"),
    }
}

fn row(cell: &Cell, label: &str, runs: &[RunResult]) -> String {
    let ok: Vec<&RunResult> = runs.iter().filter(|r| r.failed.is_none()).collect();
    let failed = runs.len() - ok.len();
    let f = |g: fn(&RunResult) -> f64| ok.iter().map(|r| g(r)).collect::<Vec<f64>>();
    let opt =
        |g: fn(&RunResult) -> Option<f64>| ok.iter().filter_map(|r| g(r)).collect::<Vec<f64>>();
    let lost: u64 = ok.iter().map(|r| r.lost).sum();
    let dup: u64 = ok.iter().map(|r| r.dup).sum();
    let extra: u64 = ok.iter().map(|r| r.extra).sum();
    let errors: u64 = ok.iter().map(|r| r.errors).sum();
    let undrained = ok.iter().filter(|r| !r.drained).count();
    let exited: usize = ok.iter().map(|r| r.exited).sum();
    let mut acct = format!("{lost} / {dup}");
    if extra > 0 {
        acct.push_str(&format!(", {extra} unknown"));
    }
    if errors > 0 {
        acct.push_str(&format!(", {errors} session errors"));
    }
    if exited > 0 {
        acct.push_str(&format!(", {exited} postgate process(es) exited early"));
    }
    if undrained > 0 {
        acct.push_str(&format!(", {undrained} run(s) not drained"));
    }
    if failed > 0 {
        acct.push_str(&format!(", {failed} run(s) failed"));
    }
    let dl: Vec<i64> = ok.iter().filter_map(|r| r.deadlocks).collect();
    format!(
        "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
        cell.name(),
        label,
        rate(f(|r| r.submitted)),
        rate(f(|r| r.e2e)),
        plain(f(|r| r.p50_ms), 1),
        plain(f(|r| r.p99_ms), 1),
        thousands(median(f(|r| r.queued as f64)).map(|m| m.0).unwrap_or(0.0)),
        acct,
        plain(opt(|r| r.cpu_postgate), 2),
        plain(opt(|r| r.cpu_pg), 2),
        plain(opt(|r| r.cpu_driver), 2),
        if cell.pg && !dl.is_empty() {
            dl.iter().sum::<i64>().to_string()
        } else {
            "-".into()
        },
    )
}

fn one_line(cell: &Cell, label: &str, run: usize, r: &RunResult) -> String {
    if let Some(e) = &r.failed {
        return format!("{} {label} run {run}: FAILED {e}", cell.name());
    }
    format!(
        "{} {label} run {run}: submitted {:.0}/s, e2e {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, queued {}, lost {}, dup {}, unknown {}, errors {}, exited {}, drained {}, cpu/1k postgate {} pg {} driver {}, deadlocks {}, load {} -> {}",
        cell.name(),
        r.submitted,
        r.e2e,
        r.p50_ms,
        r.p99_ms,
        r.queued,
        r.lost,
        r.dup,
        r.extra,
        r.errors,
        r.exited,
        r.drained,
        r.cpu_postgate.map_or("-".into(), |v| format!("{v:.2}")),
        r.cpu_pg.map_or("-".into(), |v| format!("{v:.2}")),
        r.cpu_driver.map_or("-".into(), |v| format!("{v:.2}")),
        r.deadlocks.map_or("-".into(), |v| v.to_string()),
        r.load_start,
        r.load,
    ) + &r.events.as_ref().map_or(String::new(), |e| {
        format!(
            "; events: backlog at end {}, behind {}, received {} of {} expected, missing delivered {} accepted {}, dup {}, bad posts {}, settle {:.1} s",
            e.backlog.map_or("-".into(), |v| format!("{v:.0}")),
            e.lag,
            e.received,
            2 * e.expected,
            e.missing_delivered,
            e.missing_accepted,
            e.dup,
            e.bad,
            e.settle_s
        )
    })
}

/// The 1-minute figure of a load average line.
fn first(load: &str) -> f64 {
    load.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn utc_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let arch = Command::new("uname")
        .arg("-m")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{arch}, {cpus} CPUs (nproc)")
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let opts = opts();
    let cells: Vec<Cell> = all_cells()
        .into_iter()
        .filter(|c| opts.pg.is_some() || !c.pg)
        .filter(|c| {
            opts.cells.is_empty() || opts.cells.iter().any(|s| c.name().contains(s.as_str()))
        })
        .collect();
    if cells.is_empty() {
        die("no cell matches --cells");
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = postgate::tls::self_signed(&["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert_der: Vec<CertificateDer<'static>> = rustls_pemfile_certs(&cert_pem);
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert_der.clone(), key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in &cert_der {
        roots.add(c.clone()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sink = start_sink(tokio_rustls::TlsAcceptor::from(Arc::new(server))).await;
    let started = utc_now();
    let load_start = loadavg();
    let env = Env {
        opts,
        sink,
        cert,
        key,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        dir,
        counter: AtomicU64::new(0),
        hook: hook::start().await,
    };
    let o = &env.opts;
    eprintln!(
        "perf: {} cells x {} binaries x {} runs, warm-up {} s + {} s each; load average {load_start}",
        cells.len(),
        o.bins.len(),
        o.runs,
        o.warmup,
        o.duration
    );
    let mut results: Vec<Vec<Vec<RunResult>>> = vec![vec![Vec::new(); o.bins.len()]; cells.len()];
    let mut loads = Vec::new();
    let mut lines = Vec::new();
    for run in 1..=o.runs {
        for (ci, cell) in cells.iter().enumerate() {
            for (bi, (label, bin)) in o.bins.iter().enumerate() {
                let r = run_once(&env, cell, bin).await;
                let line = one_line(cell, label, run, &r);
                println!("{line}");
                lines.push(line);
                loads.push(r.load.clone());
                results[ci][bi].push(r);
            }
        }
    }
    let mut md = String::new();
    md.push_str(&format!("# postgate benchmark, {started}\n\n"));
    md.push_str(&format!(
        "Machine: {}; load average (1/5/15 min) {load_start} at the start, {} at the end{}.\n",
        machine(),
        loadavg(),
        match (
            loads.iter().min_by(|a, b| first(a).total_cmp(&first(b))),
            loads.iter().max_by(|a, b| first(a).total_cmp(&first(b))),
        ) {
            (Some(lo), Some(hi)) => format!(" (after each run: {lo} to {hi})"),
            _ => String::new(),
        }
    ));
    md.push_str(&format!(
        "Each cell: {} run(s), warm-up {} s, timed {} s; medians, rates with (min-max). Binaries: {}.\n",
        o.runs,
        o.warmup,
        o.duration,
        o.bins
            .iter()
            .map(|(l, p)| format!("`{l}` = {}", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(pg) = &o.pg {
        let v = psql(&format!("{pg}/postgres"), "SELECT current_setting('server_version') || ', fsync ' || current_setting('fsync') || ', synchronous_commit ' || current_setting('synchronous_commit') || ', shared_preload_libraries ' || current_setting('shared_preload_libraries')").unwrap_or_default();
        md.push_str(&format!("PostgreSQL {v}. SQLite: WAL, synchronous FULL.\n"));
    }
    md.push_str(
        "\nCell: backend, C concurrent sessions (STARTTLS + AUTH PLAIN, 50 messages each, no pipelining), \
         message size, DKIM signing, postgate processes; `-http`: the same messages through `POST /v1/messages` \
         (HTTPS keep-alive, one connection per client); `-events`: `[events]` and a `[[webhook]]` on. \
         Latency: end of data to 250, or request to 202 (after the durable commit). \
         Queued: accepted minus delivered when the timed window ended. Lost / dup: by Message-ID at the sink \
         after draining. CPU: seconds in the window per 1,000 messages delivered in it (PostgreSQL: the whole cluster; \
         load + sink: this driver, which shares the machine). \
         Deadlocks: `pg_stat_database` of the run's database, whole run.\n\n",
    );
    md.push_str("| cell | binary | submitted msg/s | end-to-end msg/s | 250 / 202 p50 / p99 ms | queued at end | lost / dup | CPU s/1k postgate | CPU s/1k PostgreSQL | CPU s/1k load + sink | deadlocks |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (ci, cell) in cells.iter().enumerate() {
        for (bi, (label, _)) in o.bins.iter().enumerate() {
            md.push_str(&row(cell, label, &results[ci][bi]));
            md.push('\n');
        }
    }
    let labels: Vec<String> = o.bins.iter().map(|(l, _)| l.clone()).collect();
    md.push_str(&compare::tables(&cells, &labels, &results));
    let mut tops = String::new();
    for (ci, cell) in cells.iter().enumerate() {
        for (bi, (label, _)) in o.bins.iter().enumerate() {
            let Some(last) = results[ci][bi].iter().rev().find(|r| !r.top.is_empty()) else {
                continue;
            };
            tops.push_str(&format!(
                "\n{} `{label}` (last run, timed window):\n\n| calls | total ms | mean ms | statement |\n| --- | --- | --- | --- |\n",
                cell.name()
            ));
            for l in &last.top {
                let f: Vec<&str> = l.splitn(4, '|').collect();
                if f.len() == 4 {
                    tops.push_str(&format!(
                        "| {} | {} | {} | `{}` |\n",
                        f[0],
                        f[1],
                        f[2],
                        f[3].replace('|', "\\|").replace('`', "'")
                    ));
                }
            }
        }
    }
    if !tops.is_empty() {
        md.push_str("\n## Top statements (pg_stat_statements, by total time)\n");
        md.push_str(&tops);
    }
    md.push_str("\n## Every run, in the order run (load averages at its start -> end)\n\n```\n");
    for l in &lines {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str("```\n");
    println!("\n{md}");
    if let Some(out) = &o.out {
        if let Some(parent) = out.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(out, &md).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
        eprintln!("perf: wrote {}", out.display());
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM")
}
