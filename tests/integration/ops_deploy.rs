//! deploy/ checked by tools that understand each file: promtool (rules,
//! rule unit tests, scrape config), systemd-analyze (unit verify and
//! sandbox score), PyYAML (compose, Kubernetes) with structural assertions,
//! and the Grafana dashboard and alert rules against the metric catalogue.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use postgate::http::HttpConfig;
use postgate::logging::LogConfig;
use postgate::metrics::{MetricKind, Metrics, MetricsOptions};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a tool; panics with its output unless it exits 0. Returns (stdout, stderr).
fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (tests/run.sh installs the tools)"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Every document of a YAML file, parsed by PyYAML and handed over as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let (json, _) = run(Command::new("python3").args([
        "-c",
        "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        path.to_str().unwrap(),
    ]));
    serde_json::from_str(&json).unwrap()
}

/// Metric names (`postgate_...`) a PromQL expression refers to, with the
/// histogram suffixes mapped back to their family.
fn referenced_metrics(expr: &str, histograms: &HashSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(pos) = rest.find("postgate_") {
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| histograms.contains(*f))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

struct Catalogue {
    names: HashSet<String>,
    histograms: HashSet<String>,
}

fn catalogue() -> Catalogue {
    let m = Metrics::new(&MetricsOptions::default());
    Catalogue {
        names: m.catalogue().iter().map(|i| i.name.clone()).collect(),
        histograms: m
            .catalogue()
            .iter()
            .filter(|i| i.kind == MetricKind::Histogram)
            .map(|i| i.name.clone())
            .collect(),
    }
}

#[test]
fn ops_prometheus_rules_and_config_pass_promtool() {
    let dir = deploy("prometheus");
    let (out, _) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("rules.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml")));
    // Each alert fires on synthetic series and stays quiet where it should.
    let (out, _) = run(Command::new("promtool")
        .args(["test", "rules", "rules_test.yml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");

    // Every metric an alert uses is declared; the required alerts exist.
    let cat = catalogue();
    let rules = &yaml_docs(&dir.join("rules.yml"))[0];
    let mut alerts = BTreeSet::new();
    let mut anchors = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for name in referenced_metrics(expr, &cat.histograms) {
                assert!(
                    cat.names.contains(&name),
                    "rules.yml uses undeclared {name}"
                );
            }
            let alert = rule["alert"].as_str().unwrap();
            let runbook = rule["annotations"]["runbook"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook"));
            let anchor = runbook
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{alert}: {runbook}"));
            anchors.insert(anchor.to_string());
            alerts.insert(alert.to_string());
        }
    }
    for expected in [
        "PostgateQueueOldestMessage",
        "PostgateHighDeferralRate",
        "PostgateUpstreamCircuitOpen",
        "PostgateNoUsableUpstream",
        "PostgateAuthFailureSpike",
        "PostgateCertificateExpiresSoon",
    ] {
        assert!(alerts.contains(expected), "missing alert {expected}");
    }
    // The run book has a section for every alert.
    let runbook = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::to_lowercase)
        .collect();
    for anchor in &anchors {
        assert!(
            headings.contains(anchor),
            "docs/operations.md lacks a section for #{anchor}"
        );
    }
}

#[test]
fn ops_systemd_unit_verifies_and_is_sandboxed() {
    // The documented install is the stripped `dist` build (Cargo.toml's profile).
    let runbook = read(&deploy("../docs/operations.md"));
    assert!(runbook.contains("cargo build --profile dist --locked"));
    assert!(runbook.contains("install -m 0755 target/dist/postgate /usr/local/bin/postgate"));
    let manifest = read(&deploy("../Cargo.toml"));
    let dist = &manifest[manifest.find("[profile.dist]").expect("[profile.dist]")..];
    assert!(
        dist.contains("strip = true") && dist.contains("debug = false"),
        "{dist}"
    );
    let unit = read(&deploy("systemd/postgate.service"));
    for directive in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ReadWritePaths=/var/lib/postgate",
        "User=postgate",
        "ExecStart=/usr/local/bin/postgate serve --config /etc/postgate/postgate.toml",
    ] {
        assert!(
            unit.lines().any(|l| l == directive),
            "unit lacks {directive}"
        );
    }
    // verify needs ExecStart to exist: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/postgate", env!("CARGO_BIN_EXE_postgate")),
    )
    .unwrap();
    let (_, stderr) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    // Unknown or misspelt directives are only warnings: refuse them too.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
    // Exposure score at most 2.0 ("OK") by systemd's own sandbox analysis.
    run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path));
}

/// The `[http]` and `[log]` sections of a deploy config deserialize into
/// this crate's structs; `admin_token` comes from env `POSTGATE_ADMIN_TOKEN`.
/// Returns the env variables the config reads.
fn check_postgate_toml(text: &str, what: &str) -> BTreeSet<String> {
    let mut doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut envs = BTreeSet::new();
    let mut http = doc
        .remove("http")
        .expect("[http]")
        .try_into::<toml::Table>()
        .unwrap();
    let token = http.remove("admin_token").expect("admin_token");
    envs.insert(
        token["env"]
            .as_str()
            .expect("admin_token from env")
            .to_string(),
    );
    let http: HttpConfig = toml::Value::Table(http)
        .try_into()
        .unwrap_or_else(|e| panic!("{what} [http]: {e}"));
    assert_eq!(http.address.port(), 9587, "{what}");
    assert!(
        http.address.ip().is_unspecified(),
        "{what}: probes and Prometheus reach the pod/container IP"
    );
    let _: LogConfig = doc
        .remove("log")
        .expect("[log]")
        .try_into()
        .unwrap_or_else(|e| panic!("{what} [log]: {e}"));
    if let Some(url) = doc["store"].get("url").and_then(|u| u.get("env")) {
        envs.insert(url.as_str().unwrap().to_string());
    }
    let listeners = doc["smtp"]["listener"]
        .as_array()
        .expect("[[smtp.listener]]");
    let ports: BTreeSet<_> = listeners
        .iter()
        .map(|l| {
            l["address"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from(["465".to_string(), "587".to_string()]),
        "{what}"
    );
    let upstreams = doc["upstream"]
        .as_array()
        .expect("[[upstream]]: serve needs one");
    for u in upstreams {
        if let Some(var) = u.get("password").and_then(|p| p.get("env")) {
            envs.insert(var.as_str().unwrap().to_string());
        }
    }
    // The whole file loads through the real Config parser (every key known,
    // every value valid), given the secrets it reads from the environment.
    for var in &envs {
        let value = if var == "DATABASE_URL" {
            "postgres://postgate:secret@postgres:5432/postgate"
        } else {
            "deploy-test-secret-0123456789"
        };
        std::env::set_var(var, value);
    }
    let config = postgate::config::Config::parse(text, what).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.upstreams.is_empty(), "{what}");
    config
        .delivery()
        .validate()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    envs
}

#[test]
fn ops_compose_file_is_consistent() {
    let compose = &yaml_docs(&deploy("docker-compose.yml"))[0];
    let services = compose["services"].as_object().unwrap();
    for s in ["postgres", "postgate", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "compose lacks service {s}");
    }
    // Every file or directory mounted from deploy/ exists (except the operator's certificates).
    for (name, svc) in services {
        for v in svc["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let v = v.as_str().unwrap();
            if let Some(host) = v.strip_prefix("./") {
                let host = host.split(':').next().unwrap();
                if host != "compose/tls" {
                    assert!(deploy(host).exists(), "{name} mounts missing ./{host}");
                }
            }
        }
    }
    let postgate = &services["postgate"];
    assert_eq!(postgate["build"]["dockerfile"], "deploy/Dockerfile");
    let check: Vec<&str> = postgate["healthcheck"]["test"]
        .as_array()
        .expect("postgate healthcheck")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(check.last(), Some(&"health"), "{check:?}");
    // Every variable compose insists on is named in its header and in the run book's commands.
    let text = read(&deploy("docker-compose.yml"));
    let header: String = text.lines().take_while(|l| l.starts_with('#')).collect();
    let runbook = read(&deploy("../docs/operations.md"));
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let var = rest.split([':', '}']).next().unwrap();
        assert!(
            header.contains(var),
            "compose header does not mention {var}"
        );
        assert!(
            runbook.contains(&format!("export {var}=")),
            "docs/operations.md does not export {var}"
        );
    }
    assert_eq!(
        postgate["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    let env: BTreeSet<String> = postgate["environment"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let needed = check_postgate_toml(
        &read(&deploy("compose/postgate.toml")),
        "compose/postgate.toml",
    );
    assert!(
        needed.is_subset(&env),
        "config reads {needed:?}, compose sets {env:?}"
    );
    // The metrics port is published on loopback only.
    let ports: Vec<&str> = postgate["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"127.0.0.1:9587:9587"), "{ports:?}");
    // Prometheus scrapes the compose service name on the HTTP port.
    let prom = &yaml_docs(&deploy("prometheus/prometheus.yml"))[0];
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "postgate:9587"
    );
}

#[test]
fn ops_kubernetes_manifests_are_consistent() {
    let kustomization = &yaml_docs(&deploy("k8s/kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for r in kustomization["resources"].as_array().unwrap() {
        docs.extend(yaml_docs(&deploy(&format!("k8s/{}", r.as_str().unwrap()))));
    }
    let secret = &yaml_docs(&deploy("k8s/secret.example.yaml"))[0];
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodMonitor",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(k), "k8s lacks a {k}");
    }
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let envs_read = check_postgate_toml(
        config["data"]["postgate.toml"].as_str().unwrap(),
        "k8s ConfigMap",
    );

    let mut container_ports = BTreeSet::new();
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 35,
            "grace > shutdown_grace"
        );
        for c in pod["containers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http", "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http", "{name}");
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            for p in c["ports"].as_array().unwrap() {
                container_ports.insert((
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_u64().unwrap(),
                ));
            }
            // Env vars the config reads come from the Secret, whose example defines the keys.
            let env = c["env"].as_array().unwrap();
            for var in &envs_read {
                let e = env
                    .iter()
                    .find(|e| e["name"] == var.as_str())
                    .unwrap_or_else(|| panic!("{name} lacks env {var}"));
                let r = &e["valueFrom"]["secretKeyRef"];
                assert_eq!(r["name"], secret["metadata"]["name"], "{var}");
                assert!(
                    secret["stringData"][r["key"].as_str().unwrap()].is_string(),
                    "{var}"
                );
            }
            // Volumes mounted exist in the pod spec.
            for m in c["volumeMounts"].as_array().unwrap() {
                assert!(
                    pod["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v["name"] == m["name"]),
                    "{m}"
                );
            }
        }
    }
    assert!(container_ports.contains(&("http".to_string(), 9587)));
    let names: BTreeSet<String> = container_ports.iter().map(|(n, _)| n.clone()).collect();
    let mut smtp_ports = BTreeSet::new();
    for s in docs.iter().filter(|d| d["kind"] == "Service") {
        for p in s["spec"]["ports"].as_array().unwrap() {
            assert!(
                names.contains(p["targetPort"].as_str().unwrap()),
                "service targets unknown port {p}"
            );
            smtp_ports.insert(p["port"].as_u64().unwrap());
        }
    }
    assert!(
        smtp_ports.is_superset(&BTreeSet::from([587, 465])),
        "{smtp_ports:?}"
    );
    let monitor = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert!(names.contains(endpoint["port"].as_str().unwrap()));
    assert_eq!(endpoint["path"], "/metrics");
    // kube-prometheus-stack selects PodMonitors by their `release` label.
    assert!(monitor["metadata"]["labels"]["release"].is_string());
    // The Operator names the job "<namespace>/postgate": the relabeling must
    // give the job every alert and dashboard query selects.
    let job = endpoint["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["targetLabel"] == "job")
        .expect("a relabeling that sets job")["replacement"]
        .as_str()
        .unwrap()
        .to_string();
    for file in ["prometheus/rules.yml", "grafana/dashboards/postgate.json"] {
        let text = read(&deploy(file)).replace("\\\"", "\"");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("job=\"") {
            rest = &rest[i + 5..];
            let used = rest.split('"').next().unwrap();
            assert_eq!(
                used, job,
                "{file} selects job={used:?}, the PodMonitor sets {job:?}"
            );
        }
    }
    // Every key of the Secret the Deployment reads is in the documented
    // `kubectl create secret` commands (run book and the example's header).
    let mut keys = BTreeSet::new();
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            for e in c["env"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let r = &e["valueFrom"]["secretKeyRef"];
                if r["name"] == "postgate" {
                    keys.insert(r["key"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(!keys.is_empty());
    let runbook = read(&deploy("../docs/operations.md"));
    let example = read(&deploy("k8s/secret.example.yaml"));
    for (what, text) in [
        ("docs/operations.md", &runbook),
        ("secret.example.yaml", &example),
    ] {
        let command = &text[text
            .find("kubectl create secret generic postgate")
            .expect(what)..];
        let command: String = command
            .lines()
            .take_while(|l| !l.contains("kubectl create secret tls"))
            .collect();
        for k in &keys {
            assert!(
                command.contains(&format!("--from-literal={k}=")),
                "{what}: the kubectl command lacks {k}"
            );
        }
    }
}

#[test]
fn ops_grafana_dashboard_uses_declared_metrics() {
    let cat = catalogue();
    let dash: Value =
        serde_json::from_str(&read(&deploy("grafana/dashboards/postgate.json"))).unwrap();
    let ds = &yaml_docs(&deploy("grafana/provisioning/datasources/prometheus.yml"))[0];
    let uid = ds["datasources"][0]["uid"].as_str().unwrap();
    let mut used = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: no description"
        );
        assert_eq!(panel["datasource"]["uid"], uid, "{title}");
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            exprs.push(expr.to_string());
            for name in referenced_metrics(expr, &cat.histograms) {
                assert!(cat.names.contains(&name), "{title}: undeclared {name}");
                used.insert(name);
            }
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // Every query is valid PromQL: promtool parses them as recording rules,
    // with Grafana's variables replaced by what Grafana would substitute.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_queries.yml");
    // JSON is YAML: promtool reads it as is.
    let doc = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, doc.to_string()).unwrap();
    run(Command::new("promtool").args(["check", "rules"]).arg(&file));
    for v in dash["templating"]["list"].as_array().unwrap() {
        used.extend(referenced_metrics(
            v["definition"].as_str().unwrap(),
            &cat.histograms,
        ));
    }
    // Every metric is on the dashboard, except the optional per-user series.
    let missing: Vec<_> = cat
        .names
        .iter()
        .filter(|n| !used.contains(*n) && !n.starts_with("postgate_user_"))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    // And every metric is documented in the run book's catalogue.
    let runbook = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    let undocumented: Vec<_> = cat
        .names
        .iter()
        .filter(|n| !runbook.contains(&format!("`{n}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/operations.md: {undocumented:?}"
    );
}

#[test]
fn ops_dockerfile_is_multi_stage_and_non_root() {
    let text = read(&deploy("Dockerfile"));
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1.95") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    assert!(
        froms[1].contains("debian:") && froms[1].contains("-slim"),
        "{}",
        froms[1]
    );
    assert!(text.contains("COPY --from=builder"));
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    // The stripped `dist` profile (Cargo.toml), not the release build with line tables.
    assert!(text.contains("cargo build --profile dist --locked"));
    assert!(text.contains("target/dist/postgate"));
    assert!(text.contains(r#"CMD ["serve", "--config", "/etc/postgate/postgate.toml"]"#));
    // The image has no curl: the health check is postgate's own.
    let check = text
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK "))
        .nth(1)
        .expect("HEALTHCHECK");
    assert!(
        check.contains(r#""/usr/local/bin/postgate""#) && check.contains(r#""health"]"#),
        "{check}"
    );
    // The files the image copies exist in the build context.
    assert!(deploy("postgate.example.toml").exists());
}
