//! DKIM signing benchmark: signatures per second for RSA-2048 and Ed25519
//! (and both together, RFC 8463 dual signing) on 10 KB messages, through
//! the real `Signer` (keys from a SQLite store, RSA on the blocking pool).
//!
//! Run: `cargo run --release --example dkim_bench [-- MESSAGES RUNS]`
//! (defaults 2000 messages, 5 runs). Prints the median of the runs for
//! sequential signing (one message at a time) and for 8 concurrent tasks.

use std::sync::Arc;
use std::time::Instant;

use postgate::dkim::{self, DkimConfig, Signer};
use postgate::store::{self, DkimAlgorithm, StoreOptions};

fn message(domain: &str) -> bytes::Bytes {
    let mut m = format!(
        "From: Alice <alice@{domain}>\r\nTo: bob@example.org\r\nSubject: benchmark\r\nDate: Mon, 23 Nov 2026 16:51:47 +0000\r\nMessage-ID: <bench@{domain}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line = "The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij.\r\n";
    while m.len() < 10 * 1024 {
        m.push_str(line);
    }
    bytes::Bytes::from(m)
}

async fn run(signer: &Arc<Signer>, msg: &bytes::Bytes, n: usize, tasks: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let signer = signer.clone();
        let msg = msg.clone();
        let count = n / tasks + usize::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            let mut sigs = 0;
            for _ in 0..count {
                sigs += signer.sign(msg.clone()).await.unwrap().selectors.len();
            }
            sigs
        }));
    }
    let mut sigs = 0;
    for h in handles {
        sigs += h.await.unwrap();
    }
    sigs as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(2000);
    let runs = args.get(1).copied().unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let st = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .unwrap();
    let s = st.as_ref();
    dkim::cli_generate(s, "rsa.example", "r", DkimAlgorithm::RsaSha256, None)
        .await
        .unwrap();
    dkim::cli_generate(s, "ed.example", "e", DkimAlgorithm::Ed25519Sha256, None)
        .await
        .unwrap();
    dkim::cli_generate(s, "dual.example", "r", DkimAlgorithm::RsaSha256, None)
        .await
        .unwrap();
    dkim::cli_generate(s, "dual.example", "e", DkimAlgorithm::Ed25519Sha256, None)
        .await
        .unwrap();
    let signer = Arc::new(
        Signer::new(st.clone(), DkimConfig::default())
            .await
            .unwrap(),
    );
    println!(
        "DKIM signing, {} byte messages, {n} messages per run, median of {runs} runs, {} CPUs",
        message("rsa.example").len(),
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );
    for (label, domain) in [
        ("RSA-2048", "rsa.example"),
        ("Ed25519", "ed.example"),
        ("RSA-2048 + Ed25519 (dual)", "dual.example"),
    ] {
        let msg = message(domain);
        // Warm up (page in code, fill the blocking pool).
        run(&signer, &msg, 50, 1).await;
        for tasks in [1, 8] {
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(run(&signer, &msg, n, tasks).await);
            }
            println!(
                "{label:<28} {tasks} task(s): {:>8.0} signatures/s",
                median(rates)
            );
        }
    }
}
