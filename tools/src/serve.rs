//! What every HTTP component's subcommand shares: the HTTP switches, and running one
//! handler on a compio runtime on the main thread until the process is killed.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use clap::Args;
use shoal_servers::http::{self, Handler, HttpConfig};

#[derive(Args, Debug)]
pub struct HttpArgs {
    /// HTTP connections served at once (more wait in the kernel's backlog).
    #[arg(long, default_value_t = HttpConfig::default().connections_max)]
    http_connections_max: usize,
}

impl HttpArgs {
    pub fn config(&self) -> Result<HttpConfig, String> {
        let config = HttpConfig {
            connections_max: self.http_connections_max,
            ..HttpConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Binds `listen`, builds the handler with `make` (on the runtime, after the bind: start-up
/// work such as an origin's re-seeding runs before the component says it serves), prints
/// `<component> listening on ADDR`, and serves until the process is killed.
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
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("compio runtime: {e}"))?;
    runtime.block_on(async {
        let listener = compio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("listening on {listen}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("listening on {listen}: {e}"))?;
        let handler = make().await?;
        println!("{component} listening on {bound}");
        http::serve(listener, Rc::new(handler), config)
            .await
            .map_err(|e| format!("{component}: {e}"))
    })
}
