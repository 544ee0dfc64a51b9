//! The issue #17 tables: each `-http` and `-events` cell next to its plain
//! SMTP twin (same backend, C, size, signing, nodes) of the same run
//! rounds, medians side by side with their ratio.

use crate::{median, plain, rate, Cell, Front, RunResult};

fn ok(runs: &[RunResult]) -> Vec<&RunResult> {
    runs.iter().filter(|r| r.failed.is_none()).collect()
}

fn col(runs: &[RunResult], g: impl Fn(&RunResult) -> f64) -> Vec<f64> {
    ok(runs).into_iter().map(g).collect()
}

fn opt(runs: &[RunResult], g: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
    ok(runs).into_iter().filter_map(g).collect()
}

/// Median of `new` over median of `base`, e.g. "0.93x".
fn ratio(new: Vec<f64>, base: Vec<f64>) -> String {
    match (median(new), median(base)) {
        (Some((n, _, _)), Some((b, _, _))) if b > 0.0 => format!("{:.2}x", n / b),
        _ => "-".into(),
    }
}

fn lat(runs: &[RunResult]) -> String {
    format!(
        "{} / {}",
        plain(col(runs, |r| r.p50_ms), 1),
        plain(col(runs, |r| r.p99_ms), 1)
    )
}

fn sum(runs: &[RunResult], g: impl Fn(&RunResult) -> u64) -> u64 {
    ok(runs).into_iter().map(g).sum()
}

/// Markdown for the HTTP and events comparisons; empty when no such cell ran.
pub fn tables(cells: &[Cell], labels: &[String], results: &[Vec<Vec<RunResult>>]) -> String {
    let twin_of = |cell: &Cell| {
        let name = cell.twin().name();
        cells.iter().position(|c| c.name() == name)
    };
    let empty: Vec<RunResult> = Vec::new();
    let mut http = String::new();
    let mut events = String::new();
    for (ci, cell) in cells.iter().enumerate() {
        if cell.front == Front::Smtp && !cell.events {
            continue;
        }
        for (bi, label) in labels.iter().enumerate() {
            let on = &results[ci][bi];
            let off = twin_of(cell).map_or(&empty, |t| &results[t][bi]);
            if cell.front == Front::Http {
                http.push_str(&format!(
                    "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |\n",
                    cell.name(),
                    rate(col(off, |r| r.submitted)),
                    rate(col(on, |r| r.submitted)),
                    ratio(col(on, |r| r.submitted), col(off, |r| r.submitted)),
                    rate(col(off, |r| r.e2e)),
                    rate(col(on, |r| r.e2e)),
                    lat(off),
                    lat(on),
                    plain(opt(off, |r| r.cpu_postgate), 2),
                    plain(opt(on, |r| r.cpu_postgate), 2),
                    sum(on, |r| r.lost),
                    sum(on, |r| r.dup),
                    sum(on, |r| r.errors),
                    sum(on, |r| r.extra),
                ));
            }
            if cell.events {
                let ev: Vec<_> = ok(on)
                    .into_iter()
                    .filter_map(|r| r.events.clone())
                    .collect();
                let evsum = |g: fn(&crate::EventStats) -> u64| ev.iter().map(g).sum::<u64>();
                let backlog: Vec<f64> = ev.iter().filter_map(|e| e.backlog).collect();
                events.push_str(&format!(
                    "| {} | {label} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |\n",
                    cell.name(),
                    rate(col(off, |r| r.e2e)),
                    rate(col(on, |r| r.e2e)),
                    ratio(col(on, |r| r.e2e), col(off, |r| r.e2e)),
                    plain(opt(off, |r| r.cpu_postgate), 2),
                    plain(opt(on, |r| r.cpu_postgate), 2),
                    plain(opt(off, |r| r.cpu_pg), 2),
                    plain(opt(on, |r| r.cpu_pg), 2),
                    plain(backlog, 0),
                    plain(ev.iter().map(|e| e.lag as f64).collect(), 0),
                    evsum(|e| e.received),
                    evsum(|e| 2 * e.expected),
                    evsum(|e| e.missing_delivered),
                    evsum(|e| e.missing_accepted),
                    evsum(|e| e.dup),
                    evsum(|e| e.bad),
                    plain(ev.iter().map(|e| e.settle_s).collect(), 1),
                ));
            }
        }
    }
    let mut md = String::new();
    if !http.is_empty() {
        md.push_str(
            "\n## HTTP submission next to SMTP (issue #17)\n\n\
             Each `-http` cell against the SMTP cell of the same backend, C and size in the same rounds. \
             HTTP: one keep-alive HTTPS connection per client, `POST /v1/messages` (JSON, HTTP Basic), one request \
             at a time; latency from the request sent to the whole 202 read. Medians; ratio = HTTP / SMTP. \
             Lost / dup / errors / unknown: the HTTP cell's, summed over its runs.\n\n\
             | cell | binary | SMTP submitted msg/s | HTTP submitted msg/s | HTTP / SMTP | SMTP end-to-end msg/s | HTTP end-to-end msg/s | SMTP 250 p50 / p99 ms | HTTP 202 p50 / p99 ms | CPU s/1k postgate SMTP / HTTP | lost / dup | errors / unknown |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        md.push_str(&http);
    }
    if !events.is_empty() {
        md.push_str(
            "\n## Events and a webhook on and off (issue #17)\n\n\
             Each `-events` cell (`[events]` on, one `[[webhook]]` with all kinds to the driver's receiver, which checks \
             every signature) against the same SMTP cell with events off, in the same rounds. Medians; ratio = on / off. \
             Backlog: `postgate_webhook_backlog_events` when the window closed (refreshed by the node every 5 s). \
             Behind: messages at the sink minus messages whose `delivered` event had arrived, when the window closed. \
             Received / expected: events received (all kinds, duplicates included) against one `accepted` and one \
             `delivered` per accepted message, summed over the runs. Missing: accepted messages without that event \
             after the wait. Settle: seconds from the last message at the sink to the last `delivered` event \
             (bounded by `--drain`).\n\n\
             | cell | binary | end-to-end msg/s, off | on | on / off | CPU s/1k postgate off / on | CPU s/1k PostgreSQL off / on | backlog at end | behind at end | events received / expected | missing delivered / accepted | duplicate events / bad POSTs | settle s |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        md.push_str(&events);
    }
    md
}
