//! What every component's subcommand shares: the HTTP switches, binding a listener, serving
//! one HTTP handler, and running a component's future on a compio runtime on the calling
//! thread until it ends or is told to stop ([`Stop`]: SIGINT/SIGTERM for a single-component
//! subcommand, a channel for the components of `shoal dev`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use clap::Args;
use compio::net::TcpListener;
use futures_util::future::{Either, select};
use shoal_engine::{Engine, EngineConfig};
use shoal_servers::config::HttpSection;
use shoal_servers::http::{self, Handler, HttpConfig};

use crate::settings::ConfigFile;

#[derive(Args, Debug)]
pub struct HttpArgs {
    /// HTTP connections served at once (more wait in the kernel's backlog) [default: 1024,
    /// or the file's http.connections_max].
    #[arg(long)]
    http_connections_max: Option<usize>,
}

impl HttpArgs {
    /// The HTTP server's config: defaults, then the file's `[http]`, then the flags.
    pub fn config<T>(
        &self,
        section: &HttpSection,
        file: &ConfigFile<T>,
    ) -> Result<HttpConfig, String> {
        let mut config = HttpConfig::default();
        section.overlay(&mut config).map_err(|e| file.error(e))?;
        if let Some(n) = self.http_connections_max {
            config.connections_max = n;
        }
        config.validate().map_err(|e| file.error(e))?;
        Ok(config)
    }
}

/// SIGINT and SIGTERM (the same numbers on every Unix Shoal runs on).
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when the
/// future is first polled (see [`poll_once`]); until then the signals keep their default
/// action.
pub async fn signals() -> Result<(), String> {
    let interrupt = pin!(compio::signal::unix::signal(SIGINT));
    let terminate = pin!(compio::signal::unix::signal(SIGTERM));
    match select(interrupt, terminate).await {
        Either::Left((result, _)) | Either::Right((result, _)) => {
            result.map_err(|e| format!("signal handler: {e}"))
        }
    }
}

/// Polls `future` once (so that what it installs on its first poll, signal handlers, is in
/// place) and gives its output if that poll completed it. Must run inside a compio runtime.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *future).poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// What ends a component's run (besides the component ending by itself).
#[derive(Debug)]
pub enum Stop {
    /// SIGINT or SIGTERM: a single-component subcommand.
    Signals,
    /// A message on, or the hang-up of, the channel: one component of `shoal dev`.
    Channel(flume::Receiver<()>),
}

impl Stop {
    async fn wait(self) -> Result<(), String> {
        match self {
            Stop::Signals => signals().await,
            Stop::Channel(receiver) => {
                let _ = receiver.recv_async().await;
                Ok(())
            }
        }
    }
}

/// Runs `component` on a new compio runtime on this thread until it ends (its result) or
/// `stop` fires (`Ok`). `stop` is polled first, so signal handlers are in place before the
/// component prints that it serves.
pub fn run_until<F>(stop: Stop, component: F) -> Result<(), String>
where
    F: Future<Output = Result<(), String>>,
{
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("compio runtime: {e}"))?;
    runtime.block_on(async move {
        // The component (its listeners, its connections) is dropped at the end of this
        // statement.
        let outcome = match select(pin!(stop.wait()), pin!(component)).await {
            Either::Left((stopped, _)) => stopped,
            Either::Right((ended, _)) => ended,
        };
        // Dropping a socket with an operation in flight (a listener's accept) cancels the
        // operation; the socket is closed once the cancellation completes, which needs the
        // driver to run. A runtime dropped before that leaves the ring's teardown to the
        // kernel, which releases the sockets a little later: a restart right away would
        // find the ports still taken.
        compio::time::sleep(CLOSE_GRACE).await;
        outcome
    })
}

/// How long a stopped component's runtime keeps running for its sockets' cancellations and
/// closes to complete.
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// Binds `listen`; errors name the address.
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    Ok((listener, bound))
}

/// Binds `listen`, builds the handler with `make` (after the bind: start-up work such as an
/// origin's re-seeding runs before the component says it serves), calls `ready` with the
/// bound address, and serves. Must run inside a compio runtime.
pub async fn serve_http<H, F>(
    component: &str,
    listen: SocketAddr,
    config: HttpConfig,
    make: impl FnOnce() -> F,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String>
where
    H: Handler,
    F: Future<Output = Result<H, String>>,
{
    let (listener, bound) = bind(listen).await?;
    let handler = make().await?;
    ready(bound);
    http::serve(listener, Rc::new(handler), config)
        .await
        .map_err(|e| format!("{component}: {e}"))
}

/// Prints `<component> listening on ADDR`: the line the single-component subcommands print
/// once they serve (tests and scripts wait for it).
pub fn print_listening(component: &str) -> impl FnOnce(SocketAddr) + '_ {
    move |bound| println!("{component} listening on {bound}")
}

/// Binds `listen`, builds the handler with `make`, prints `<component> listening on ADDR`,
/// and serves on a compio runtime on this thread until SIGINT or SIGTERM (then `Ok`).
pub fn run<H, F>(
    component: &str,
    listen: SocketAddr,
    config: HttpConfig,
    make: impl FnOnce() -> F,
) -> Result<(), String>
where
    H: Handler,
    F: Future<Output = Result<H, String>>,
{
    run_until(
        Stop::Signals,
        serve_http(component, listen, config, make, print_listening(component)),
    )
}

/// An engine that shuts down (its shards stopped and joined, its store closed) when dropped:
/// held by a component's future, so a component stopped at any point stops its engine.
#[derive(Debug)]
pub struct EngineGuard(Engine);

impl EngineGuard {
    pub fn start(config: EngineConfig) -> Result<EngineGuard, String> {
        let data_dir = config.data_dir.clone();
        Engine::start(config)
            .map(EngineGuard)
            .map_err(|e| format!("engine in {}: {e}", data_dir.display()))
    }

    pub fn engine(&self) -> &Engine {
        &self.0
    }
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}
