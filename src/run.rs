//! Composition of one postgate node: store, SMTP server, intake, delivery,
//! HTTP, reloads and the shutdown order. `serve` binds, then calls [`run`];
//! tests call [`run`] in-process with listeners bound to port 0.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::smtp::config::ListenerConfig;
use crate::store::Store;

/// Why a node could not start. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Server(#[from] crate::smtp::server::ServerError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitsError),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
    #[error("{0}")]
    Events(String),
    #[error("cannot listen on {address} (api.address): {source}")]
    ApiBind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {address} (http.address): {source}")]
    HttpBind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Sockets bound before start (so privileges can be dropped, and tests can
/// bind port 0 and read the port).
pub struct Bound {
    pub smtp: Vec<(ListenerConfig, TcpListener)>,
    pub http: Option<TcpListener>,
}

impl Bound {
    /// Binds every SMTP listener and the HTTP address of `config`.
    pub async fn bind(config: &Config) -> Result<Bound, RunError> {
        let smtp = crate::smtp::server::Server::bind(&config.smtp.listeners).await?;
        let address = config.http.address;
        let http = TcpListener::bind(address)
            .await
            .map_err(|source| RunError::HttpBind { address, source })?;
        Ok(Bound {
            smtp,
            http: Some(http),
        })
    }
}

/// How the outside world steers a running node.
#[derive(Clone, Default)]
pub struct Control {
    /// Cancel to shut down gracefully (SIGTERM).
    pub shutdown: CancellationToken,
    /// Notify to reload certificates and DKIM keys (SIGHUP).
    pub reload: Arc<Notify>,
    /// The config file `serve` read: re-read on each reload to report the
    /// settings that changed in it and need a restart (none: not re-read).
    pub config_file: Option<std::path::PathBuf>,
}

/// Runs one node until `control.shutdown` is cancelled, then shuts down in
/// order: readiness goes 503, listeners stop accepting, sessions finish
/// (up to `server.shutdown_grace`, then 421), delivery workers finish their
/// current attempt, and the HTTP server stops last.
pub async fn run(config: Config, bound: Bound, control: Control) -> Result<(), RunError> {
    let node = Node::open(config, &bound).await?;
    let (ports, invalidation) = node.session_ports().await?;
    let server = node.smtp_server(ports.clone())?;

    let delivery_shutdown = CancellationToken::new();
    // Stops delivery if starting the rest fails below.
    let _stop_delivery = delivery_shutdown.clone().drop_guard();
    let delivery = node.start_delivery(delivery_shutdown.clone()).await?;

    let draining = CancellationToken::new();
    let http_shutdown = CancellationToken::new();
    let mut background = tokio::task::JoinSet::new();
    node.start_events(&mut background, &control).await?;
    if let Some(listener) = bound.http {
        // `/health/upstreams` (readiness never depends on upstreams).
        let circuits = delivery.circuits.clone();
        let upstreams = (!circuits.is_empty())
            .then(|| Arc::new(circuits) as Arc<dyn crate::http::UpstreamHealth>);
        let state = node.http_state(upstreams, draining.clone())?;
        background.spawn(crate::http::serve(listener, state, http_shutdown.clone()));
    }
    node.start_api(&mut background, ports, &server, &draining)
        .await?;
    background.spawn(node.reload_task(control.clone()));

    let smtp_shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(bound.smtp, smtp_shutdown.clone()));
    tracing::info!(hostname = %node.config.server.hostname, "postgate started");

    control.shutdown.cancelled().await;
    tracing::info!("shutting down: draining");
    draining.cancel();
    smtp_shutdown.cancel();
    let _ = serving.await;
    delivery_shutdown.cancel();
    let _ = delivery.handle.await;
    http_shutdown.cancel();
    invalidation.abort();
    background.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// What the parts of one node share; [`run`] starts them in named steps.
struct Node {
    config: Config,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    tls: Option<crate::tls::ServerTls>,
    /// The SMTP listeners' metric names and TLS modes.
    listeners: Vec<(String, crate::metrics::TlsMode)>,
    signer: Option<Arc<crate::dkim::Signer>>,
    limiter: Arc<crate::limits::Limiter>,
}

impl Node {
    /// Opens the store (migrating it when configured), loads the
    /// certificate and the DKIM signer, builds metrics and the limiter.
    async fn open(config: Config, bound: &Bound) -> Result<Node, RunError> {
        let options = config.store.options();
        let url = config.store.url.expose();
        let store: Arc<dyn Store> = if config.store.migrate_on_start {
            crate::store::open_and_migrate(url, &options).await?
        } else {
            crate::store::open(url, &options).await?
        };
        tracing::info!(backend = store.backend(), "store ready");
        let metrics = Arc::new(Metrics::new(&config.http.metrics_options()));
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::ServerTls::load)
            .transpose()?;
        let listeners: Vec<(String, crate::metrics::TlsMode)> = bound
            .smtp
            .iter()
            .map(|(l, _)| (l.address.to_string(), l.mode.metric_label()))
            .collect();
        if let Some(t) = &tls {
            record_certificate_expiry(&metrics, &listeners, t);
        }
        let signer = if config.dkim.enabled {
            let signer = crate::dkim::Signer::new(store.clone(), config.dkim.clone()).await?;
            Some(Arc::new(signer))
        } else {
            None
        };
        let limit_store: Arc<dyn crate::store::LimitStore> = store.clone();
        let limiter = Arc::new(crate::limits::Limiter::new(
            config.limits.clone(),
            Some(limit_store),
            Arc::new(crate::limits::clock::SystemClock),
        )?);
        Ok(Node {
            config,
            store,
            metrics,
            tls,
            listeners,
            signer,
            limiter,
        })
    }

    /// What a session (SMTP or HTTP API) talks to: the intake, the cached
    /// authenticator (with the task that invalidates its cache on account
    /// changes) and the limits.
    async fn session_ports(
        &self,
    ) -> Result<(crate::smtp::session::Ports, tokio::task::JoinHandle<()>), RunError> {
        let (config, store) = (&self.config, &self.store);
        let intake = crate::intake::StoreIntake::new(store.clone(), queue_lifetime(config))
            .with_processing(crate::intake::MessageProcessing {
                hostname: config.server.hostname.clone(),
                enforce_header_from: config.dkim.header_from
                    == crate::dkim::HeaderFromPolicy::Enforce,
                fixups: config.fixups.clone(),
                signer: self.signer.clone(),
            })
            .with_metrics(self.metrics.clone())
            .with_journal(crate::journal::Journal::new(&config.journal))
            .with_rejections(
                config
                    .events_enabled()
                    .then(|| {
                        crate::events::rejected::RejectionWriter::new(
                            store.clone(),
                            self.metrics.clone(),
                            config.events.rejected_per_second,
                        )
                    })
                    .flatten(),
            );
        let verifier: Arc<dyn crate::smtp::ports::Authenticator> = Arc::new(
            crate::auth::StoreAuthenticator::new(store.clone(), &config.auth)?
                .with_metrics(self.metrics.clone()),
        );
        let auth_cache = Arc::new(crate::auth_cache::AuthCache::new(config.auth_cache.clone()));
        let invalidation = auth_cache.spawn_invalidation(store.subscribe_auth_changes().await?);
        let ports = crate::smtp::session::Ports {
            authenticator: Arc::new(crate::auth::CachedAuthenticator::new(verifier, auth_cache)),
            intake: Arc::new(intake),
            limits: Arc::new(crate::limits::LimiterPorts::new(
                self.limiter.clone(),
                self.metrics.clone(),
            )),
        };
        Ok((ports, invalidation))
    }

    /// The SMTP server over `ports`.
    fn smtp_server(
        &self,
        ports: crate::smtp::session::Ports,
    ) -> Result<crate::smtp::server::Server, RunError> {
        let mut smtp_config = self.config.smtp.clone();
        // Two keys bound concurrent connections per IP; the lower one applies.
        if self.config.limits.ip_concurrent_connections > 0 {
            smtp_config.max_connections_per_ip = smtp_config
                .max_connections_per_ip
                .min(self.config.limits.ip_concurrent_connections as usize);
        }
        Ok(crate::smtp::server::Server::new(
            self.config.server.hostname.clone(),
            smtp_config,
            self.tls.clone(),
            ports,
            self.config.server.shutdown_grace,
        )?
        .with_metrics(self.metrics.clone()))
    }

    /// Starts the delivery workers, on a store pool of their own on
    /// PostgreSQL (`[store] delivery_connections`). `serve` refuses a config
    /// without upstreams; in-process callers may run an intake-only node
    /// (delivery then starts no workers; messages stay queued).
    async fn start_delivery(
        &self,
        shutdown: CancellationToken,
    ) -> Result<crate::delivery::Started, RunError> {
        let mut delivery_config = self.config.delivery();
        // DSNs are signed like the messages intake accepts.
        delivery_config.dsn_signer = self.signer.clone();
        let store = crate::store::open_for_delivery(
            self.config.store.url.expose(),
            &self.config.store.delivery_options(),
            &self.store,
        )
        .await?;
        Ok(crate::delivery::Delivery::start_with(
            store,
            delivery_config,
            shutdown,
            self.metrics.clone(),
            self.limiter.clone(),
        )?)
    }

    /// Starts the webhook senders and event pruning (when configured) and
    /// the queue gauges' sampler.
    async fn start_events(
        &self,
        background: &mut tokio::task::JoinSet<()>,
        control: &Control,
    ) -> Result<(), RunError> {
        crate::events::start(
            self.store.clone(),
            &self.config.events,
            &self.config.webhooks,
            self.metrics.clone(),
            &self.config.server.node_id(),
            control.shutdown.clone(),
            background,
        )
        .await
        .map_err(RunError::Events)?;
        let store = self.store.clone();
        background.spawn(crate::metrics::run_queue_sampler(
            self.metrics.clone(),
            QUEUE_SAMPLE_INTERVAL,
            control.shutdown.clone(),
            move || {
                let store = store.clone();
                async move { crate::delivery::sample_queue(&*store).await }
            },
        ));
        Ok(())
    }

    /// The state of the HTTP server (metrics, health, admin).
    fn http_state(
        &self,
        upstreams: Option<Arc<dyn crate::http::UpstreamHealth>>,
        draining: CancellationToken,
    ) -> Result<crate::http::HttpState, RunError> {
        Ok(crate::http::HttpState::from_config(
            &self.config.http,
            self.metrics.clone(),
            self.store.clone(),
            Some(Arc::new(crate::admin::NodeAdmin {
                store: self.store.clone(),
                limiter: self.limiter.clone(),
            })),
            upstreams,
            draining,
        )?)
    }

    /// Starts the HTTPS submission API when it is enabled (it needs `[tls]`).
    async fn start_api(
        &self,
        background: &mut tokio::task::JoinSet<()>,
        ports: crate::smtp::session::Ports,
        server: &crate::smtp::server::Server,
        draining: &CancellationToken,
    ) -> Result<(), RunError> {
        let (true, Some(tls)) = (self.config.api.enabled, &self.tls) else {
            return Ok(());
        };
        let (listener, state) = crate::http::api::start(
            &self.config,
            self.store.clone(),
            ports,
            &self.metrics,
            server.memory(),
        )
        .await?;
        background.spawn(crate::http::api::serve(
            listener,
            tls.clone(),
            state,
            draining.clone(),
        ));
        Ok(())
    }

    /// The task that reloads certificates and DKIM keys.
    fn reload_task(&self, control: Control) -> impl std::future::Future<Output = ()> {
        reload_loop(
            control,
            self.config.clone(),
            self.tls.clone(),
            self.signer.clone(),
            self.config.dkim.reload_interval,
            self.metrics.clone(),
            self.listeners.clone(),
        )
    }
}

/// How often the queue gauges are sampled from the store.
const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a message may stay queued (`queue.lifetime`).
fn queue_lifetime(config: &Config) -> Duration {
    config.queue.lifetime
}

fn record_certificate_expiry(
    metrics: &Metrics,
    listeners: &[(String, crate::metrics::TlsMode)],
    tls: &crate::tls::ServerTls,
) {
    let not_after = tls
        .current_leaf()
        .and_then(|leaf| crate::metrics::certificate_not_after(&leaf))
        .unwrap_or(0);
    for (name, mode) in listeners {
        if *mode != crate::metrics::TlsMode::Plain {
            metrics
                .listener(name, *mode)
                .set_certificate_expiry(not_after);
        }
    }
}

/// Re-reads `file` and logs which of its sections differ from `running`
/// (they apply at the next restart), or why it cannot be read.
fn report_config_changes(running: &Config, file: Option<&std::path::Path>) {
    let Some(file) = file else { return };
    match Config::load(file) {
        Err(e) => tracing::error!(error = %e,
            "reload: config file has errors; nothing of it changes until it is fixed and postgate restarted"),
        Ok(new) => {
            let changed = running.changed_sections(&new);
            if changed.is_empty() {
                tracing::info!(file = %file.display(), "reload: config file unchanged");
            } else {
                tracing::warn!(file = %file.display(), sections = %changed.join(", "),
                    "reload: these config sections changed and apply only after a restart (SIGHUP reloads the TLS certificate files and DKIM keys)");
            }
        }
    }
}

/// Reloads certificates and DKIM keys on `control.reload`, and DKIM keys
/// every `dkim_interval`; logs what changed. A failed reload keeps the old
/// material and says why. On `control.reload` the config file is read
/// again and the sections that changed in it are logged as needing a
/// restart: everything but the certificate files' contents and the DKIM
/// keys is read once, at start.
async fn reload_loop(
    control: Control,
    running: Config,
    tls: Option<crate::tls::ServerTls>,
    signer: Option<Arc<crate::dkim::Signer>>,
    dkim_interval: Option<Duration>,
    metrics: Arc<Metrics>,
    listeners: Vec<(String, crate::metrics::TlsMode)>,
) {
    let interval = dkim_interval
        .unwrap_or(Duration::from_secs(3600))
        .max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        let full = tokio::select! {
            _ = control.shutdown.cancelled() => return,
            _ = control.reload.notified() => true,
            _ = tick.tick() => false,
        };
        if full {
            report_config_changes(&running, control.config_file.as_deref());
            if let Some(t) = &tls {
                match t.reload() {
                    Ok(()) => {
                        record_certificate_expiry(&metrics, &listeners, t);
                        tracing::info!("reload: TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload: TLS certificate kept, new one failed")
                    }
                }
            }
        }
        if let Some(s) = &signer {
            match s.reload().await {
                Ok(n) if full => tracing::info!(keys = n, "reload: DKIM keys reloaded"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reload: DKIM keys kept, reload failed"),
            }
        }
    }
}
