//! The clickstream example: generate clicks into a topic, or run the job on them.
//!
//! ```text
//! cargo run -p sluice-stream --release --example clickstream -- generate BROKER [COUNT] [RATE]
//!     COUNT clicks (default 100000) at RATE clicks/s (default 1000; 0 = as fast as possible)
//!     into the topic `clicks` (created with 4 partitions if missing), stamped with the time now
//! cargo run -p sluice-stream --release --example clickstream -- run BROKER CHECKPOINT_DIR [OUT_DIR]
//!     the job in 1 s batches until SIGTERM/Ctrl-C: the top 10 items per 60 s window sliding
//!     every 10 s, and ended user sessions, on stdout, or as JSON-lines files under OUT_DIR
//! ```

// An example talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use sluice_client::{Client, ClientConfig, Producer, ProducerConfig};
use sluice_stream::clickstream::{self, ClickGenerator, ClickstreamConfig, GeneratorConfig};
use sluice_stream::{JsonLinesFiles, Stdout, StreamConfig, StreamingContext};

const TOPIC: &str = "clicks";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["generate", broker, rest @ ..] => {
            let count = rest.first().map_or(Ok(100_000), |c| c.parse())?;
            let rate: f64 = rest.get(1).map_or(Ok(1_000.0), |r| r.parse())?;
            generate(broker, count, rate).await
        }
        ["run", broker, checkpoint, rest @ ..] => run(broker, checkpoint, rest.first().copied()).await,
        _ => {
            println!(
                "usage: clickstream generate BROKER [COUNT] [RATE] | clickstream run BROKER CHECKPOINT_DIR [OUT_DIR]"
            );
            std::process::exit(2);
        }
    }
}

async fn generate(broker: &str, count: u64, rate: f64) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig::new([broker])).await?;
    if !client.refresh_metadata(None).await?.topics.contains_key(TOPIC) {
        client.create_topic(TOPIC, 4, 1).await?;
    }
    let now_ms = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let pace = if rate > 0.0 { rate } else { 1_000_000.0 };
    let mut config = GeneratorConfig::default();
    config.seed = now_ms.unsigned_abs();
    config.start_ms = now_ms;
    config.clicks_per_second = pace;
    let mut clicks = ClickGenerator::new(config);
    let producer = Producer::new(client, ProducerConfig::default()).await?;
    let started = Instant::now();
    for i in 0..count {
        if rate > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        drop(producer.send(clicks.next_click().to_record(TOPIC)).await?);
    }
    producer.flush().await?;
    println!("{count} clicks in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn run(broker: &str, checkpoint: &str, out: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    let config = StreamConfig::new([broker], [TOPIC], Duration::from_secs(1), checkpoint);
    let ctx = StreamingContext::new(config);
    let job = ClickstreamConfig::default();
    let counters = match out {
        Some(dir) => clickstream::build(
            ctx.kafka_stream(),
            &job,
            JsonLinesFiles::new(format!("{dir}/top-items")),
            JsonLinesFiles::new(format!("{dir}/sessions")),
        ),
        None => clickstream::build(ctx.kafka_stream(), &job, Stdout { max_items: 10 }, Stdout { max_items: 5 }),
    };
    let stop = ctx.stop_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let batches = ctx
        .run(|p| {
            if p.num_input_rows > 0 {
                println!("batch {}: {} clicks in {} ms", p.batch_id, p.num_input_rows, p.durations.total_ms);
            }
        })
        .await?;
    println!(
        "{batches} batches; {} unparsable records, {} late clicks dropped",
        counters.unparsable.load(std::sync::atomic::Ordering::Relaxed),
        counters.late.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
