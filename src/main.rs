//! Command line: `run`, `check`, exit codes and signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::app::{App, AppOptions};
use switchyard::config::{self, BackendTarget};
use switchyard::control::{ReloadResult, Trigger};
use switchyard::logging::{self, LogFormat};
use switchyard::sockets::SocketRegistry;
use switchyard::template::once::render_once;
use switchyard::upgrade::{self, Handover, Relaunch};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A load-balancer sidecar that reconfigures itself while it runs"
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or RUST_LOG-style directives (RUST_LOG wins when set).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. SIGHUP reloads the config; SIGTERM drains, then exits.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Data-plane worker threads, each with its own runtime and its own
        /// SO_REUSEPORT socket per listener (default: the cores this
        /// process may use).
        #[arg(long)]
        threads: Option<usize>,
        /// Do not reload when the config files change; only on SIGHUP or
        /// POST /reload.
        #[arg(long)]
        no_watch: bool,
        /// How long a new process started by an upgrade has to report
        /// ready before it is stopped and this one keeps serving.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        upgrade_timeout: std::time::Duration,
        /// Take the listening sockets from the process being replaced, over
        /// this Unix socket (set by `switchyard upgrade`; not for hand use).
        #[arg(long, value_name = "SOCKET")]
        upgrade_from: Option<PathBuf>,
    },
    /// Upgrade the running process in place: it starts the binary at the
    /// path it was started from, hands it every listening socket, and
    /// drains once the new process serves. Exits 0 when the new process
    /// serves, 1 with the reason when not (the old one keeps serving).
    Upgrade {
        /// The running process's config file (for its admin address).
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// The running process's admin address, instead of the config's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Validate a config file, print a summary, exit non-zero on error.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Render the templates, like consul-template.
    Render {
        /// Config file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Render once and exit (the only mode: `run` keeps templates
        /// current).
        #[arg(long, required = true)]
        once: bool,
        /// Print the rendered text instead of writing files; run no command.
        #[arg(long)]
        dry: bool,
        /// How long to wait for the data the templates read.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    switchyard::allocator::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Render {
            config,
            once: _,
            dry,
            timeout,
        } => {
            logging::init(cli.log_format, &cli.log_level);
            render(&config, dry, timeout)
        }
        Command::Upgrade { config, admin } => request_upgrade(&config, admin),
        Command::Run {
            config,
            threads,
            no_watch,
            upgrade_timeout,
            upgrade_from,
        } => {
            logging::init(cli.log_format, &cli.log_level);
            let workers = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let options = AppOptions {
                watch_config: !no_watch,
                // One worker: everything on the main thread. A process with
                // one thread skips glibc's multi-thread paths on every
                // recv, send, malloc and free (measured: 400 instructions
                // per request), as HAProxy with `nbthread 1` does.
                workers: if workers <= 1 { 0 } else { workers },
                sockets: SocketRegistry::default(),
                // The path as started: once a package replaces the file (or
                // re-points the symlink), the same path names the new
                // version.
                relaunch: Relaunch::started_as()
                    .map(|exe| Relaunch::from_current(exe, upgrade_timeout)),
                ..AppOptions::default()
            };
            match run(&config, options, upgrade_from.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn render(path: &Path, dry: bool, timeout: std::time::Duration) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(render_once(path, dry, timeout)) {
        Ok(outputs) => {
            for out in outputs {
                if dry {
                    // consul-template's -dry format.
                    println!("> {}", out.destination.display());
                    print!("{}", out.text);
                } else {
                    let what = if out.written { "written" } else { "unchanged" };
                    eprintln!("{}: {what}", out.destination.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            println!("{}: OK", path.display());
            println!(
                "  {} listener(s), {} route(s), {} backend(s), {} file(s); admin on {}",
                c.listeners.len(),
                c.routes.len(),
                c.backends.len(),
                c.files.len(),
                c.admin_bind
            );
            for l in &c.listeners {
                let routes = c.routes.iter().filter(|r| r.listener == l.name).count();
                let default = l.default_backend.as_deref().unwrap_or("-");
                println!(
                    "  listener {} {} {}: {routes} route(s), default backend {default}",
                    l.name,
                    l.bind,
                    l.mode_name()
                );
                for cert in l.tls.iter().flat_map(|t| &t.certs) {
                    println!(
                        "    certificate {}: {}, expires {}",
                        cert.cert_file.display(),
                        cert.names.join(" "),
                        switchyard::tls::certs::rfc3339(cert.not_after)
                    );
                }
            }
            for b in &c.backends {
                match &b.target {
                    BackendTarget::Servers(s) => {
                        let names: Vec<String> = s
                            .iter()
                            .filter(|s| s.target.dns_query().is_some())
                            .map(|s| s.target.to_string())
                            .collect();
                        let dns = if names.is_empty() {
                            String::new()
                        } else {
                            format!(" (resolved at runtime: {})", names.join(", "))
                        };
                        println!(
                            "  backend {}: {} server(s){dns}, {:?}",
                            b.name,
                            s.len(),
                            b.balance
                        )
                    }
                    BackendTarget::Consul(c) => {
                        let tag = c
                            .tag
                            .as_deref()
                            .map_or(String::new(), |t| format!(", tag {t}"));
                        println!(
                            "  backend {}: Consul service {}{tag}, {:?}",
                            b.name, c.service, b.balance
                        )
                    }
                    BackendTarget::Mdns(m) => {
                        println!(
                            "  backend {}: mDNS {} service {m}, {:?}",
                            b.name,
                            m.flavour(),
                            b.balance
                        )
                    }
                    BackendTarget::Respond(r) => {
                        println!("  backend {}: responds {}", b.name, r.status)
                    }
                    BackendTarget::Gateway(g) => {
                        let from = match &g.from {
                            config::ServiceFrom::Path => "/{service}/...".to_string(),
                            config::ServiceFrom::Host { domain } => format!("{{service}}.{domain}"),
                        };
                        println!("  {}: Consul services by name, {from}", b.name)
                    }
                }
            }
            let mut template_errors = 0;
            for t in &c.templates {
                let included = if t.included { ", included" } else { "" };
                match switchyard::template::Compiled::load(t) {
                    Ok(_) => println!(
                        "  template {} -> {}{included}",
                        t.name,
                        t.destination.display()
                    ),
                    Err(e) => {
                        template_errors += 1;
                        eprintln!("  {e}");
                    }
                }
            }
            if let Some(kv) = &c.kv {
                println!("  kv directory {}", kv.dir.display());
            }
            for r in &c.register {
                let check = match r.check.as_ref().map(|c| &c.kind) {
                    Some(config::RegisterCheckKind::Http { path }) => format!("http check {path}"),
                    Some(config::RegisterCheckKind::Tcp) => "tcp check".into(),
                    Some(config::RegisterCheckKind::Ttl { ttl, .. }) => {
                        format!("ttl check {}", humantime::format_duration(*ttl))
                    }
                    None => "no check".into(),
                };
                println!(
                    "  registers {} as {} on port {}, {check}",
                    r.name, r.id, r.port
                );
            }
            for l in c.listeners.iter().filter(|l| l.consul_tag_routes) {
                println!("  listener {} takes routes from urlprefix- tags", l.name);
            }
            if template_errors > 0 {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!(
                "{}: invalid config ({} problem(s))",
                path.display(),
                errors.0.len()
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `switchyard upgrade`: asks the running process and says what happened.
fn request_upgrade(config: &Path, admin: Option<std::net::SocketAddr>) -> ExitCode {
    let admin = match admin.map_or_else(|| upgrade::client::admin_address(config), Ok) {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match upgrade::client::request(admin) {
        Ok(answer) if answer.result == "success" => {
            println!(
                "upgraded: process {} serves now (took {} ms); process {} drains and exits",
                answer.new_pid.unwrap_or(0),
                answer.took_ms.unwrap_or(0),
                answer.pid
            );
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            let code = answer
                .exit_code
                .map_or(String::new(), |c| format!(" (new process exit status {c})"));
            eprintln!(
                "switchyard: upgrade {}{code}: {}; process {} keeps serving",
                answer.result,
                answer.error.as_deref().unwrap_or("no reason given"),
                answer.pid
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the open-file limit to the hard limit, as HAProxy does: every
/// client and upstream connection is a descriptor, and the usual soft
/// limit (1024) would cap a sidecar at a few hundred clients.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "Open-file limit"),
        Err(error) => tracing::warn!(%error, "Cannot raise the open-file limit"),
    }
}

fn run(path: &Path, mut options: AppOptions, upgrade_from: Option<&Path>) -> anyhow::Result<()> {
    raise_file_limit();
    let passed = options.sockets.inherit_systemd();
    if passed > 0 {
        tracing::info!(
            sockets = passed,
            "Listening sockets passed by systemd (LISTEN_FDS)"
        );
    }
    // Before the runtime starts: the old process waits for us, and the
    // sockets must be filed before any listener binds.
    let mut handover = upgrade_from
        .map(|socket| {
            Handover::receive(socket, &options.sockets)
                .with_context(|| format!("taking the listening sockets over {}", socket.display()))
        })
        .transpose()?;
    if let Some(handover) = handover.as_mut() {
        options.handed = std::mem::take(&mut handover.state);
    }
    // The control plane (reloads, discovery, templates, admin) on this
    // thread; the data plane on `options.workers` threads of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut usr2 = signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?;
        let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
        let app = match App::start(path, options).await {
            Ok(app) => app,
            Err(error) => {
                let error = anyhow::Error::from(error);
                if let Some(handover) = handover {
                    handover.failed(&format!("{error:#}"));
                }
                return Err(error);
            }
        };
        let upgraded = handover.is_some();
        if let Some(handover) = handover {
            // If the old process is gone, it cannot stop accepting either:
            // both serve until it exits, which loses nothing.
            match handover.ready() {
                Ok(predecessor) => app.follow_predecessor(predecessor),
                Err(error) => {
                    tracing::warn!(%error, "Cannot tell the old process this one is ready")
                }
            }
        }
        upgrade::notify_systemd_ready(upgraded);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let record = app.reload(Trigger::Signal).await;
                    if record.is_some_and(|r| r.result == ReloadResult::Failure) {
                        tracing::warn!("Reload on SIGHUP failed; see the errors above");
                    }
                }
                _ = usr2.recv() => {
                    // A failed upgrade is logged where it fails; a refused
                    // one only here.
                    if let Err(error) = app.upgrade().await
                        && error.is_refusal()
                    {
                        tracing::warn!(%error, "SIGUSR2: no upgrade");
                    }
                }
                // logrotate's `postrotate`: reopen the access log files.
                _ = usr1.recv() => switchyard::access_log::reopen(),
                () = app.retired() => {
                    switchyard::access_log::flush(ACCESS_LOG_FLUSH);
                    return Ok(());
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        app.shutdown().await;
        switchyard::access_log::flush(ACCESS_LOG_FLUSH);
        Ok(())
    })
}

/// The longest an exiting process waits to write its last access log lines.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);
