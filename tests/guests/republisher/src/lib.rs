//! Test fixture, not shipped: a transform whose action is a publish. It
//! forwards the body to the exchange named by its `exchange` config value,
//! with the routing key `forwarded.<original key>` and a header naming the
//! original key, so a test can follow the message through.

use passerelle_guest::{Action, Failure, Header, Message, Publish, config, reject, transform};

fn forward(msg: Message) -> Result<Vec<Action>, Failure> {
    let exchange = config("exchange").ok_or_else(|| reject("config value `exchange` is missing"))?;
    Ok(vec![Action::Publish(Publish {
        exchange,
        routing_key: format!("forwarded.{}", msg.routing_key),
        body: msg.body,
        headers: vec![Header {
            name: "x-original-routing-key".into(),
            value: msg.routing_key,
        }],
    })])
}

transform!(forward);
