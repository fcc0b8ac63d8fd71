use clap::Parser;

use chat_core::{shutdown, telemetry};
use chat_ws_server::settings::Settings;
use chat_ws_server::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let telemetry = telemetry::init("chat-ws-server", settings.log.log_format);
    let result = run(settings).await;
    // Flushes the spans still queued (no-op when traces are not exported).
    telemetry.shutdown();
    result
}

async fn run(mut settings: Settings) -> anyhow::Result<()> {
    settings.kafka.load()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown::on_signals()).await
}
