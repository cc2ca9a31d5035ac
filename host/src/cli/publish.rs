//! `passerelle publish`: one message from stdin onto an exchange, with
//! publisher confirms.

use std::io::Read as _;
use std::sync::Arc;

use clap::Args;
use passerelle::amqp;
use passerelle::config::Config;

use super::{ConfigArg, Destination};

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    to: Destination,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long, default_value = "application/json")]
    content_type: String,
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<u8> {
    let config = Config::load_for_broker(&args.config.path)?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let connection = Arc::new(amqp::connect_first(&config.amqp.urls, "passerelle-publish").await?);
    let mut properties = lapin::BasicProperties::default().with_content_type(args.content_type.as_str().into());
    if let Some(id) = &args.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    amqp::Publisher::new(connection.clone())
        .publish(&args.to.exchange, &args.to.routing_key, &body, properties)
        .await?;
    let _ = connection.close(200, "published".into()).await;
    println!(
        "published to {:?} with routing key {:?}",
        args.to.exchange, args.to.routing_key
    );
    Ok(0)
}
