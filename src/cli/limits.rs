//! `postgate limits show|reset`: rate-limit counters and lockouts, on
//! every limits backend. Shared backends (`postgres`, `store`): read and
//! cleared in the store. `local`: the counters live in the serving
//! process, so the command asks that process over its admin endpoint
//! (`[http] address` and `admin_token` of the same config).

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{load_config, open_store, print_json, time, Failure};
use postgate::config::Config;
use postgate::limits::LimitsSnapshot;

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Print the current counters and lockouts.
    Show {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Clear the counters and lockouts of TARGET.
    Reset {
        /// An IP address, a CIDR network (every IP counter in it), a
        /// username, uid:ID or cred:ID (as `limits show` lists them).
        target: String,
    },
}

fn snapshot_json(s: &LimitsSnapshot) -> Value {
    let counters: Vec<Value> = s
        .counters
        .iter()
        .map(|c| {
            json!({
                "subject": c.subject,
                "kind": c.kind,
                "used": c.used,
                "limit": c.limit.map(|r| r.count),
                "period_ms": c.limit.map(|r| r.period_ms),
                "clear_at": time(c.until_ms),
            })
        })
        .collect();
    json!({ "counters": counters })
}

/// Runs one `limits` command.
pub async fn run(config_path: Option<&Path>, cmd: &LimitsCommand) -> Result<(), Failure> {
    use postgate::limits::{clock::SystemClock, config::LimitsBackend, operator, Limiter};
    let config = load_config(config_path)?;
    if config.limits.backend == LimitsBackend::Local {
        return via_node(&config, cmd).await;
    }
    let store = open_store(&config, config_path).await?;
    let limit_store: std::sync::Arc<dyn postgate::store::LimitStore> = store.clone();
    let limiter = Limiter::new(
        config.limits.clone(),
        Some(limit_store),
        std::sync::Arc::new(SystemClock),
    )?;
    match cmd {
        LimitsCommand::Show { json } => {
            let snap = operator::show(&limiter).await?;
            if *json {
                print_json(&snapshot_json(&snap))?;
            } else {
                print!("{snap}");
            }
        }
        LimitsCommand::Reset { target } => {
            let n = operator::reset(&limiter, &*store, target).await?;
            println!("removed {n} counter(s) of {}", target.trim());
        }
    }
    Ok(())
}

/// The `local` backend: the same operations through the running node's
/// `/admin/limits` endpoints.
async fn via_node(config: &Config, cmd: &LimitsCommand) -> Result<(), Failure> {
    let Some(token) = config.http.admin_token.as_ref() else {
        return Err(Failure(
            "limits.backend is \"local\": the counters live in the serving process, which this command reaches through its admin endpoint; set http.admin_token in this config (and restart the node), or use a shared backend (limits.backend = \"postgres\")".into(),
            1,
        ));
    };
    let mut addr = config.http.address;
    if addr.ip().is_unspecified() {
        // Listening on every address: talk to it over loopback.
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (method, path) = match cmd {
        LimitsCommand::Show { .. } => ("GET", "/admin/limits".to_string()),
        LimitsCommand::Reset { target } => (
            "POST",
            format!("/admin/limits/{}/reset", percent_encode(target.trim())),
        ),
    };
    let (status, body) = http_request(addr, method, &path, token.expose())
        .await
        .map_err(|e| {
            Failure(
                format!("limits.backend is \"local\": cannot reach the node's admin endpoint at http://{addr}: {e} (is `postgate serve` running with this config?)"),
                1,
            )
        })?;
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status != 200 {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or(body.trim());
        return Err(Failure(
            format!("the node at http://{addr} answered {status}: {why}"),
            1,
        ));
    }
    match cmd {
        LimitsCommand::Show { json } => {
            if *json {
                let now = postgate::time::now_ms();
                let counters: Vec<Value> = value
                    .get("counters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| {
                        let clear_in = c.get("clear_in_ms").and_then(Value::as_i64).unwrap_or(0);
                        json!({
                            "subject": c.get("subject"),
                            "kind": c.get("kind"),
                            "used": c.get("used"),
                            "limit": c.pointer("/limit/count"),
                            "period_ms": c.pointer("/limit/period_ms"),
                            "clear_at": time(now + clear_in),
                        })
                    })
                    .collect();
                print_json(&json!({ "counters": counters }))?;
            } else {
                print!(
                    "{}",
                    value.get("text").and_then(Value::as_str).unwrap_or("")
                );
            }
        }
        LimitsCommand::Reset { target } => {
            let n = value.get("removed").and_then(Value::as_u64).unwrap_or(0);
            println!("removed {n} counter(s) of {}", target.trim());
        }
    }
    Ok(())
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.0 request to the admin endpoint (loopback, no TLS: the
/// endpoint is plain HTTP): (status, body).
async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
        })?;
    Ok((status, body.to_string()))
}
