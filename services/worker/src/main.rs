use std::time::Duration;

use clap::Parser;

use chat_core::{shutdown, telemetry};
use chat_worker::settings::{Cli, Command};
use chat_worker::startup::{self, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init("chat-worker", cli.settings.log.log_format);
    let result = run(cli).await;
    // Flushes the spans still queued (no-op when traces are not exported).
    telemetry.shutdown();
    result
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    cli.settings.kafka.load()?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate { wait_secs } => {
            startup::migrate(&cli.settings, Duration::from_secs(wait_secs)).await
        }
        Command::CreateTopics {
            partitions,
            replication,
        } => startup::create_topics(&cli.settings, partitions, replication).await,
        Command::Run => {
            let app = Application::build(cli.settings).await?;
            app.run_until_stopped(shutdown::on_signals()).await
        }
    }
}
