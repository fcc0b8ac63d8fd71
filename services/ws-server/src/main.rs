use clap::Parser;

use chat_core::{shutdown, telemetry};
use chat_ws_server::settings::Cli;
use chat_ws_server::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    let app = Application::build(cli.settings).await?;
    app.run_until_stopped(shutdown::on_signals()).await
}
