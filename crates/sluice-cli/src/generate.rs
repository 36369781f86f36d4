//! `sluice generate`: a synthetic clickstream for trying jobs out (the clickstream example's
//! generator, with event time running from now at the given rate).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_client::{Producer, ProducerConfig};
use sluice_stream::clickstream::{ClickGenerator, GeneratorConfig};

use crate::cli::GenerateArgs;
use crate::connect;
use crate::error::{CliError, CliResult};

pub async fn generate(args: GenerateArgs) -> CliResult {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(CliError::Usage(format!("--rate {}: clicks per second, 0 or more", args.rate)));
    }
    let client = connect(&args.broker).await?;
    let exists = client
        .refresh_metadata(Some(&[args.topic.as_str()]))
        .await?
        .topics
        .get(&args.topic)
        .is_some_and(|t| !t.error.is_error() && !t.partitions.is_empty());
    if !exists {
        client.create_topic(&args.topic, 4, 1).await?;
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let mut config = GeneratorConfig::default();
    config.seed = args.seed;
    config.users = args.users;
    config.items = args.items;
    // Unpaced, the clicks are 1 ms apart in event time, far faster than time passes: a
    // counted run ends at the present rather than starting there, as brokers refuse
    // timestamps far in the future (Kafka: more than an hour, by default).
    config.start_ms = match (args.rate > 0.0, args.count) {
        (false, Some(count)) => now_ms.saturating_sub(i64::try_from(count).unwrap_or(i64::MAX)),
        _ => now_ms,
    };
    config.clicks_per_second = if args.rate > 0.0 { args.rate } else { 1000.0 };
    let producer = Producer::new(client, ProducerConfig::default()).await?;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut sent = 0u64;
    // SIGINT or SIGTERM: stop generating, deliver what was sent.
    let stop = crate::signals::stop();
    tokio::pin!(stop);
    for click in ClickGenerator::new(config) {
        if args.count.is_some_and(|n| sent >= n) || args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let ahead = if args.rate > 0.0 { sent as f64 / args.rate } else { 0.0 };
        let due = started + Duration::try_from_secs_f64(ahead).unwrap_or(Duration::MAX / 4);
        let wait = tokio::time::sleep_until(due.into());
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = wait => {}
        }
        pending.push_back(producer.send(click.to_record(&args.topic)).await?);
        sent += 1;
        while pending.len() > 10_000 {
            if let Some(delivery) = pending.pop_front() {
                delivery.await?;
            }
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    eprintln!("generated {sent} clicks to {} in {:.1} s", args.topic, started.elapsed().as_secs_f64());
    Ok(())
}
