//! The clickstream example job, and a generator of realistic clicks for it.
//!
//! Clicks arrive as CSV lines `userId,itemId,timestamp` (ms since the epoch). The job keeps:
//! - clicks per item over an event-time window (60 s, sliding every 10 s), and publishes the top
//!   10 items of each window once the watermark passes its end;
//! - per user, the recently clicked items as keyed state, given out as a session summary when
//!   the user has clicked nothing for a while (a timeout in batch time).
//!
//! Run it with `cargo run -p sluice-stream --release --example clickstream`.
//!
//! ```
//! use sluice_stream::clickstream::{ClickGenerator, GeneratorConfig};
//!
//! let mut config = GeneratorConfig::default();
//! config.clicks_per_second = 100.0;
//! let mut clicks = ClickGenerator::new(config);
//! let first = clicks.next_click();
//! let second = clicks.next_click();
//! assert_eq!(second.time_ms - first.time_ms, 10, "100 clicks/s of event time");
//! assert!(first.to_line().starts_with("user-"));
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use compact_str::{format_compact, CompactString};
use serde::{Deserialize, Serialize};
use sluice_checkpoint::rng::SplitMix64;

use crate::event_time::{Timed, Watermark, Windowed};
use crate::keyed::KeyState;
use crate::record::KafkaRecord;
use crate::sink::Sink;
use crate::stream::DStream;

/// One click. Names are compact strings: up to 24 bytes live inline (user and item names
/// here are about 10), so parsing, copying and dropping a click allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// Who clicked.
    pub user: CompactString,
    /// What was clicked.
    pub item: CompactString,
    /// When (event time, ms since the epoch).
    pub time_ms: i64,
}

impl Click {
    /// The click as the CSV line the job reads.
    pub fn to_line(&self) -> String {
        format!("{},{},{}", self.user, self.item, self.time_ms)
    }

    /// The click as a record for `topic`: keyed by user (so a user's clicks share a partition
    /// and stay in order), stamped with the click's time.
    pub fn to_record(&self, topic: &str) -> sluice_client::ProducerRecord {
        sluice_client::ProducerRecord {
            key: Some(bytes::Bytes::copy_from_slice(self.user.as_bytes())),
            timestamp: Some(self.time_ms),
            ..sluice_client::ProducerRecord::new(topic, self.to_line())
        }
    }
}

/// What the generator makes.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GeneratorConfig {
    /// Seed of the pseudo-random choices (the same seed gives the same clicks).
    pub seed: u64,
    /// Distinct users, clicking uniformly.
    pub users: u32,
    /// Distinct items, their popularity following Zipf's law: the item of rank `r` is clicked
    /// in proportion to `1 / r^zipf_exponent`.
    pub items: u32,
    /// Zipf's exponent (about 1 for web page popularity).
    pub zipf_exponent: f64,
    /// Event time of the first click, ms since the epoch.
    pub start_ms: i64,
    /// Clicks per second of event time.
    pub clicks_per_second: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            users: 10_000,
            items: 1_000,
            zipf_exponent: 1.1,
            start_ms: 1_700_000_000_000,
            clicks_per_second: 1_000.0,
        }
    }
}

/// An endless, reproducible stream of clicks with skewed item popularity.
#[derive(Debug, Clone)]
pub struct ClickGenerator {
    config: GeneratorConfig,
    rng: SplitMix64,
    /// Cumulative popularity of the items by rank, ending at 1.
    cumulative: Vec<f64>,
    made: u64,
}

impl ClickGenerator {
    /// A generator as `config` says.
    pub fn new(config: GeneratorConfig) -> Self {
        let weights: Vec<f64> =
            (1..=config.items.max(1)).map(|rank| f64::from(rank).powf(-config.zipf_exponent)).collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        Self { rng: SplitMix64::new(config.seed), config, cumulative, made: 0 }
    }

    /// The next click; event time advances by `1 / clicks_per_second` each click.
    pub fn next_click(&mut self) -> Click {
        let user = self.rng.next_u64() % u64::from(self.config.users.max(1));
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let rank = self.cumulative.partition_point(|c| *c < unit).min(self.cumulative.len().saturating_sub(1));
        let offset_ms = (self.made as f64 * 1000.0 / self.config.clicks_per_second.max(f64::MIN_POSITIVE)) as i64;
        self.made += 1;
        Click {
            user: format_compact!("user-{user}"),
            item: format_compact!("item-{}", rank + 1),
            time_ms: self.config.start_ms + offset_ms,
        }
    }
}

impl Iterator for ClickGenerator {
    type Item = Click;

    fn next(&mut self) -> Option<Click> {
        Some(self.next_click())
    }
}

/// The job's settings.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClickstreamConfig {
    /// Length of the event-time window items are counted over.
    pub window: Duration,
    /// How often a window starts.
    pub slide: Duration,
    /// How far behind the greatest event time the watermark trails.
    pub allowed_lateness: Duration,
    /// A partition without clicks for this long (batch time) no longer holds the watermark back.
    pub idle_after: Duration,
    /// Items published per window.
    pub top: usize,
    /// A user with no click for this long (batch time) ends their session.
    pub session_timeout: Duration,
    /// Recently clicked items kept per user (distinct, most recent last).
    pub recent_items: usize,
}

impl Default for ClickstreamConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            slide: Duration::from_secs(10),
            allowed_lateness: Duration::from_secs(5),
            idle_after: Duration::from_secs(10),
            top: 10,
            session_timeout: Duration::from_secs(30),
            recent_items: 5,
        }
    }
}

/// One of a window's top items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopItem {
    /// The window's start (ms since the epoch).
    pub window_start_ms: i64,
    /// The window's end (exclusive).
    pub window_end_ms: i64,
    /// 1 for the most clicked; ties go to the item whose name sorts first.
    pub rank: u32,
    /// The item.
    pub item: String,
    /// Its clicks in the window.
    pub clicks: u64,
}

/// A user's session, given when it times out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSession {
    /// The user.
    pub user: String,
    /// Clicks in the session.
    pub clicks: u64,
    /// The distinct items clicked last, most recent last.
    pub recent_items: Vec<String>,
    /// Event time of the session's last click.
    pub last_click_ms: i64,
}

/// Counters of a running clickstream job (of this process).
#[derive(Debug, Clone, Default)]
pub struct ClickstreamCounters {
    /// Records that were not `user,item,timestamp`.
    pub unparsable: Arc<AtomicU64>,
    /// Clicks that came after the watermark passed them, dropped.
    pub late: Arc<AtomicU64>,
}

/// A user's state: clicks so far, recent items, last click time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    clicks: u64,
    recent: VecDeque<CompactString>,
    last_click_ms: i64,
}

fn clicks(source: DStream<KafkaRecord>, unparsable: Arc<AtomicU64>) -> DStream<Click> {
    source.flat_map(move |record: KafkaRecord| match record.csv::<(CompactString, CompactString, i64)>() {
        Ok((user, item, time_ms)) => Some(Click { user, item, time_ms }),
        Err(_) => {
            unparsable.fetch_add(1, Ordering::Relaxed);
            None
        }
    })
}

/// Builds the job on `source` (e.g. `ctx.kafka_stream()`): the top items of each window go to
/// `top_items`, ended sessions to `sessions`. In scale-out mode (the source keyed by user) the
/// clicks go through `<group>-items-repartition` to their item's task, and the top items of
/// each window are merged on one process.
pub fn build(
    source: DStream<KafkaRecord>,
    config: &ClickstreamConfig,
    top_items: impl Sink<TopItem> + 'static,
    sessions: impl Sink<UserSession> + 'static,
) -> ClickstreamCounters {
    let counters = ClickstreamCounters::default();
    // In scale-out mode idle partitions are not left out here: with them left out, the
    // repartition could not combine each item's clicks before sending them.
    let mut watermark = Watermark::new(config.allowed_lateness);
    if !source.scales_out() {
        watermark = watermark.idle_after(config.idle_after);
    }
    let late = watermark.late_records();
    let top = config.top;
    let (for_windows, for_sessions) = clicks(source, Arc::clone(&counters.unparsable)).tee();
    for_windows
        .with_watermark(watermark, |click| click.time_ms)
        .map(|timed: Timed<Click>| timed.map(|click| (click.item, 1u64)))
        // Scale-out mode: each item's clicks to its task, counted per slide first (one
        // process: the stream as it is).
        .repartition_combined("items", config.slide, |a, b| a + b)
        .reduce_by_key_and_event_window(config.window, config.slide, |a, b| a + b)
        .top_k_per_window(top, |a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map_partitions(rank)
        .to_sink(top_items);

    let recent_items = config.recent_items;
    for_sessions
        .map(|click| (click.user, (click.item, click.time_ms)))
        .map_with_state(
            Some(config.session_timeout),
            move |_, user: &CompactString, click, state: &mut KeyState<Session>| match click {
                Some((item, time_ms)) => {
                    let session = state.get_or_insert_with(Session::default)?;
                    session.clicks += 1;
                    session.recent.retain(|recent| *recent != item);
                    session.recent.push_back(item);
                    while session.recent.len() > recent_items {
                        session.recent.pop_front();
                    }
                    session.last_click_ms = time_ms;
                    None
                }
                None => state.get().map(|session| UserSession {
                    user: user.to_string(),
                    clicks: session.clicks,
                    recent_items: session.recent.iter().map(CompactString::to_string).collect(),
                    last_click_ms: session.last_click_ms,
                }),
            },
        )
        .to_sink(sessions);
    ClickstreamCounters { late, ..counters }
}

/// Ranks each window's items (they come greatest first, windows in order).
fn rank(items: Vec<Windowed<(CompactString, u64)>>) -> Vec<TopItem> {
    let mut out: Vec<TopItem> = Vec::with_capacity(items.len());
    for windowed in items {
        let rank = match out.last() {
            Some(last) if last.window_start_ms == windowed.start_ms => last.rank + 1,
            _ => 1,
        };
        let (item, clicks) = windowed.item;
        let item = item.into_string();
        out.push(TopItem { window_start_ms: windowed.start_ms, window_end_ms: windowed.end_ms, rank, item, clicks });
    }
    out
}
