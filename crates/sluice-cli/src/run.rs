//! `sluice run JOB.toml`: a job file's pipeline under the scheduler, with a progress line per
//! batch, Prometheus metrics, and a graceful stop on SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::sync::Arc;

use sluice_client::GroupProtocol;
use sluice_scheduler::{BatchProgress, RateLimits, ScaleConfig, StartingOffsets};
use sluice_stream::{StreamConfig, StreamingContext};

use crate::cli::RunArgs;
use crate::error::{CliError, CliResult};
use crate::job::{self, Job, StartSpec};
use crate::metrics::{self, Metrics};
use crate::security::Security;

fn stream_config(job: &Job, args: &RunArgs, security: &Security) -> CliResult<StreamConfig> {
    let source = job.file.source.get_ref();
    let brokers = security.brokers.clone().or_else(|| args.brokers.clone()).unwrap_or_else(|| source.brokers.clone());
    let checkpoint = args.checkpoint_dir.clone().unwrap_or_else(|| job.file.checkpoint.get_ref().dir.clone());
    let interval = source.batch_interval.get_ref().0;
    let mut config = StreamConfig::new(brokers, source.topics.get_ref().clone(), interval, checkpoint);
    security.apply(&mut config.client.connection)?;
    if let Some(memory) = &job.file.memory {
        config = config.with_memory_budget(memory.get_ref().budget.get_ref().0);
    }
    config.scheduler.starting_offsets = match (&source.start_time_ms, source.start) {
        (Some(time), _) => StartingOffsets::Timestamp(*time.get_ref()),
        (None, StartSpec::Earliest) => StartingOffsets::Earliest,
        (None, StartSpec::Latest) => StartingOffsets::Latest,
    };
    if let Some(rate) = &source.max_rate_per_partition {
        config.scheduler.limits = RateLimits { max_per_partition: Some(*rate.get_ref()), ..RateLimits::default() };
    }
    config.scheduler.backpressure = source.backpressure;
    config.scheduler.commit_to_group.clone_from(&source.commit_to_group);
    if let Some(every) = &job.file.checkpoint.get_ref().snapshot_every {
        config.snapshot_every = u64::try_from(*every.get_ref()).unwrap_or(1);
    }
    if let Some(spec) = &job.file.scale {
        let spec = spec.get_ref();
        let mut scale = ScaleConfig::new(spec.group.get_ref().clone());
        scale.instance = spec.instance.as_ref().map(|i| i.get_ref().clone());
        scale.protocol = match spec.protocol {
            job::ProtocolSpec::Auto => GroupProtocol::Auto,
            job::ProtocolSpec::Consumer => GroupProtocol::Consumer,
            job::ProtocolSpec::Classic => GroupProtocol::Classic,
        };
        if let Some(timeout) = &spec.session_timeout {
            scale.session_timeout = timeout.0;
        }
        if let Some(timeout) = &spec.transaction_timeout {
            scale.transaction_timeout = timeout.0;
        }
        if let Some(interval) = &spec.commit_interval {
            scale.commit_interval = interval.0;
        }
        config.scheduler.scale = Some(scale);
        config.standby_replicas = spec.standby_replicas;
    }
    Ok(config)
}

/// The progress line: rows, rate, lag, latency.
fn progress_line(p: &BatchProgress) -> String {
    let lag: i64 = p.sources.iter().map(|s| s.lag).sum();
    let rerun = match (p.rerun, p.aborted) {
        (_, true) => " (not committed: the group moved on; its partitions go on from the group's offsets)",
        (true, false) => " (re-run after a crash)",
        (false, false) => "",
    };
    format!(
        "batch {}: {} rows, {:.0} rows/s, lag {lag}, latency {} ms{rerun}",
        p.batch_id, p.num_input_rows, p.processed_rows_per_second, p.durations.total_ms
    )
}

fn describe(job: &Job, security: &Security) -> String {
    let f = &job.file;
    let source = f.source.get_ref();
    let mut text = format!(
        "job {}: reads {} from {} every {:?}",
        job.name,
        source.topics.get_ref().join(", "),
        source.brokers.join(","),
        source.batch_interval.get_ref().0
    );
    text.push_str(&format!(" ({})", security.describe()));
    text.push_str(&format!(", {} filter(s)", f.filters.len()));
    if let Some(a) = &f.aggregate {
        let a = a.get_ref();
        let by = a.key.as_ref().map_or_else(|| "everything".to_owned(), |k| k.get_ref().clone());
        text.push_str(&format!(", {} by {by}", a.function.name()));
    }
    if let Some(w) = &f.window {
        let w = w.get_ref();
        let time = match w.time {
            crate::job::TimeKind::Processing => "processing",
            crate::job::TimeKind::Event => "event",
        };
        text.push_str(&format!(", {:?} {time}-time windows", w.length.get_ref().0));
    }
    if let Some(t) = &f.top {
        text.push_str(&format!(", top {}", t.get_ref().k.get_ref()));
    }
    text.push_str(&format!(", {} sink(s), checkpoint {}", f.sinks.len(), f.checkpoint.get_ref().dir.display()));
    if let Some(scale) = &f.scale {
        text.push_str(&format!(
            "\n  scale-out: partitions shared in group {} ({:?} protocol), each batch one Kafka transaction",
            scale.get_ref().group.get_ref(),
            scale.get_ref().protocol
        ));
    }
    for sink in f.sinks.iter().map(|s| s.get_ref()).filter(|s| s.kind == crate::job::SinkKind::Kafka) {
        let mode = match (&f.scale, sink.transactional) {
            (Some(_), _) => "in the batch's transaction",
            (None, true) => "transactional",
            (None, false) => "idempotent",
        };
        text.push_str(&format!(
            "\n  Kafka sink to {} ({mode}), id {}",
            sink.topic.as_deref().unwrap_or_default(),
            job.kafka_sink_id(sink)
        ));
    }
    text
}

pub async fn run(args: RunArgs) -> CliResult {
    let job = job::load(&args.job).map_err(CliError::Job)?;
    let security = Security::new(job.file.security.as_ref(), &args.security)?;
    if args.check {
        return crate::out(&format!("{}\n", describe(&job, &security)));
    }
    let mut config = stream_config(&job, &args, &security)?;
    // Request latencies are measured only for a job that serves its metrics.
    let requests = args.metrics_addr.as_ref().map(|_| Arc::<metrics::RequestLatencies>::default());
    if let Some(requests) = &requests {
        config.client.connection.observer = Some(Arc::clone(requests) as Arc<dyn sluice_client::RequestObserver>);
    }
    let client = config.client.clone();
    let ctx = StreamingContext::new(config);
    let counters = crate::pipeline::build(ctx.kafka_stream(), &job, &client);
    let metrics = Arc::new(Metrics::new(&job.name, (counters, ctx.restore_counters()), requests.unwrap_or_default()));
    if let Some(addr) = &args.metrics_addr {
        // Resolved by sluice-client, not the C library (which a static binary cannot use).
        let addresses =
            sluice_client::resolve(addr).await.map_err(|e| CliError::Failed(format!("--metrics-addr {addr}: {e}")))?;
        let listener = tokio::net::TcpListener::bind(addresses.as_slice())
            .await
            .map_err(|e| CliError::Failed(format!("--metrics-addr {addr}: {e}")))?;
        tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    }
    let stop = ctx.stop_handle();
    tokio::spawn(stop_on_signal(stop.clone()));
    let mut batches = 0u64;
    let result = ctx
        .run(|p| {
            metrics.record(p);
            batches += 1;
            if !args.quiet {
                let line = if args.progress_json { p.to_json() } else { progress_line(p) };
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            if args.max_batches.is_some_and(|max| batches >= max) {
                stop.cancel();
            }
        })
        .await;
    match result {
        Ok(ran) => {
            if !args.quiet {
                let _ = writeln!(std::io::stderr(), "stopped after {ran} batch(es)");
            }
            Ok(())
        }
        Err(e) => Err(CliError::Failed(format!("job {}: {e}", job.name))),
    }
}

/// The first SIGTERM or SIGINT stops the job after the batch under way commits (at once when
/// it is waiting for the next batch); a second one exits at once (the checkpoint makes the next
/// run redo the unfinished batch).
async fn stop_on_signal(stop: sluice_stream::CancellationToken) {
    crate::signals::stop().await;
    let _ = writeln!(std::io::stderr(), "stopping once the batch under way commits (again to exit at once)");
    stop.cancel();
}
