//! `minigpt4 serve`: the OpenAI-compatible API and the web chat page (see the minigpt4-serve
//! crate), on loopback unless told otherwise.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use minigpt4_core::image::Limits;
use minigpt4_core::model_file::{minigpt4_home, ModelSpec};
use minigpt4_serve::{AppState, ServeConfig};

use crate::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on; anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id the API reports (default: the model's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Generations running at once.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Requests waiting for a worker; more get 429 Too Many Requests.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Largest request body in MiB (images travel base64-encoded inside it).
    #[arg(long, default_value_t = 20)]
    pub max_body_mib: usize,
    /// Most images in one request.
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Largest image accepted, in pixels (width × height, read from the header before decoding).
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Prompt positions (image tokens included) plus new tokens; default 2000 or the LLM's context.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Seconds running generations may take to finish after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Seconds a connection has to send a request's headers (also how long an idle one stays open).
    #[arg(long, default_value_t = 15)]
    pub header_timeout: u64,
    /// Seconds a request's body has to arrive whole.
    #[arg(long, default_value_t = 60)]
    pub body_timeout: u64,
    /// A web origin (`https://app.example`, or `*`) whose pages may call the API from the
    /// browser; repeat for several. Without it, POSTs from other origins' pages are refused.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

pub fn run(args: ServeArgs) -> Result<bool> {
    let model_id = match &args.model_id {
        Some(id) => id.clone(),
        None => ModelSpec::resolve(&args.model.model, &minigpt4_home())
            .ok()
            .and_then(|s| s.name)
            .unwrap_or_else(|| args.model.model.clone()),
    };
    let mut pipeline = args.model.load()?;
    pipeline.limits.max_pixels = args.max_image_pixels;
    pipeline.limits.max_bytes = pipeline.limits.max_bytes.min(args.max_body_mib as u64 * 1024 * 1024);
    let config = ServeConfig {
        workers: args.workers.max(1),
        queue: args.queue,
        max_body_bytes: args.max_body_mib * 1024 * 1024,
        max_images: args.max_images,
        max_tokens: args.max_tokens,
        max_context: args.max_context,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout.max(1)),
        cors_origins: args.cors_origins.iter().map(|o| o.trim_end_matches('/').to_string()).collect(),
        ..ServeConfig::new(model_id)
    };
    let state = AppState::new(Arc::new(pipeline), config);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let addr = std::net::SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        if !args.host.is_loopback() {
            eprintln!("warning: listening on {local}, reachable from other machines; there is no authentication");
        }
        eprintln!(
            "serving `{}` on http://{local}/ (chat page) and http://{local}/v1 (OpenAI API); Ctrl-C stops",
            state.config.model_id
        );
        minigpt4_serve::serve(listener, state, minigpt4_serve::shutdown_signal()).await.context("serving")?;
        eprintln!("stopped");
        anyhow::Ok(())
    })?;
    Ok(true)
}
