//! Runs the gateway: one Pingora server with the proxy, the admin endpoint and the upstream
//! health checks, built from a validated [`Config`].

use crate::admin::Admin;
use crate::auth::AuthApp;
use crate::config::{Config, Listener};
use crate::connection::WithHeaderDeadline;
use crate::gateway::Gateway;
use crate::proxy::KeyGateProxy;
use anyhow::Context;
use pingora::prelude::*;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::RunArgs;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};

/// Runs until SIGTERM (graceful: in-flight requests finish within the grace period), SIGINT
/// (at once) or SIGQUIT (graceful upgrade). With `upgrade`, takes the listening sockets over
/// from the running instance.
pub fn run(config: Config, config_path: Option<std::path::PathBuf>, upgrade: bool) -> anyhow::Result<()> {
    let mut conf =
        ServerConf { threads: config.threads, work_stealing: config.work_stealing, ..ServerConf::default() };
    conf.grace_period_seconds = Some(config.grace_period.as_secs());
    conf.graceful_shutdown_timeout_seconds = Some(config.grace_period.as_secs().max(1));
    if let Some(sock) = &config.upgrade_sock {
        conf.upgrade_sock = sock.display().to_string();
    }
    let opt = Opt { upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let pid_file = config.pid_file.clone();
    if let (Some(path), false) = (&pid_file, upgrade) {
        refuse_if_running(path)?;
    }

    let listen = config.listen.clone();
    let admin_listen = config.admin_listen.clone();
    let auth_listen = config.auth_listen.clone();
    // Before the sockets are taken over: a gateway that cannot start fails here, while the
    // running instance still serves.
    let (gateway, health_checks) = Gateway::start(config, config_path)?;
    gateway.drain_when_handed_over(server.watch_execution_phase());
    // Takes the listeners over from the running instance when upgrading.
    server.bootstrap();
    let _pid_file = pid_file
        .as_deref()
        .and_then(|path| PidFile::write(path).inspect_err(|e| log::error!("{e:#}; serving without it")).ok());

    let header_timeout = gateway.settings.load().config.header_timeout;
    let proxy_app = http_proxy(&server.configuration, KeyGateProxy::new(gateway.clone()));
    let mut proxy =
        Service::new("keygate proxy".to_string(), WithHeaderDeadline::new(proxy_app, header_timeout));
    for listener in &listen {
        add_listener(&mut proxy, listener);
    }
    server.add_service(proxy);
    server.add_service(health_checks);
    if let Some(listener) = &auth_listen {
        let auth_app = WithHeaderDeadline::new(AuthApp::new(gateway.clone()), header_timeout);
        let mut auth = Service::new("keygate auth".to_string(), auth_app);
        add_listener(&mut auth, listener);
        server.add_service(auth);
    }
    if let Some(addr) = admin_listen {
        let mut admin = Service::new("keygate admin".to_string(), Admin::new(gateway.clone()));
        admin.add_tcp(&addr);
        server.add_service(admin);
    }
    log::info!("keygate listening on {listen:?}");
    server.run(RunArgs::default());
    // The services are gone; the gateway is dropped here, on the main thread.
    drop(gateway);
    Ok(())
}

/// This process's pid in `pid_file`, where an operator finds the process to send SIGQUIT to in
/// an upgrade (or SIGHUP, SIGTERM). Pingora writes the file only when it daemonizes; keygate
/// runs in the foreground, so it writes the file itself, just before it starts serving (after
/// an upgrade's hand-over). Removed at exit unless a successor has written its own pid there
/// since.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path) -> anyhow::Result<Self> {
        // Written whole, then renamed: a reader never sees a half-written pid.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("cannot write pid_file {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if pid_in(&self.0) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A start that is not an upgrade refuses to run beside the keygate `pid_file` names: it would
/// fail to bind its listeners anyway, after taking the file from the process that serves.
fn refuse_if_running(path: &Path) -> anyhow::Result<()> {
    let Some(pid) = pid_in(path) else { return Ok(()) };
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match command.trim() == "keygate" && pid != std::process::id() {
        true => anyhow::bail!(
            "pid_file {} names a running keygate (pid {pid}): stop it first, or take it over with -u",
            path.display()
        ),
        false => Ok(()),
    }
}

/// The pid a pid file holds, if it is there and holds one.
fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn add_listener<A>(service: &mut Service<A>, listener: &Listener) {
    match listener {
        Listener::Tcp(addr) => service.add_tcp(addr),
        Listener::Unix(path) => service.add_uds(&path.display().to_string(), None),
    }
}
