//! Keyed state, timeouts, event-time windows and watermarks on batches given in advance (no
//! broker; batch time is the fake clock), and resuming a job's state after any batch.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_stream::testing::{Collected, LocalJob};
use sluice_stream::{DStream, KeyState, StreamError, Timed, Watermark, Windowed};

const SECOND: Duration = Duration::from_secs(1);

fn batches<T: Clone>(collected: &Collected<T>) -> Vec<(u64, Vec<T>)> {
    collected.lock().unwrap().iter().map(|(info, items)| (info.batch_id, items.clone())).collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

fn pairs(batches: &[&[(&str, i64)]]) -> Vec<Vec<(String, i64)>> {
    batches.iter().map(|b| b.iter().map(|(k, v)| (s(k), *v)).collect()).collect()
}

#[test]
fn update_state_by_key_sees_every_key_each_batch_and_removes_on_none() {
    let job = LocalJob::new(SECOND);
    let input = pairs(&[&[("a", 1), ("b", 2), ("a", 3)], &[("b", 1)], &[("a", 0)], &[]]);
    let calls_without_values = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = std::sync::Arc::clone(&calls_without_values);
    // A running sum per key; a 0 removes the key.
    let totals = job.collect(job.queue_stream(input).update_state_by_key(move |values: Vec<i64>, old: Option<i64>| {
        if values.is_empty() {
            calls.fetch_add(1, Ordering::SeqCst);
        }
        if values.contains(&0) {
            return None;
        }
        Some(old.unwrap_or(0) + values.iter().sum::<i64>())
    }));
    job.run(4).unwrap();
    assert_eq!(
        batches(&totals),
        vec![
            (0, vec![(s("a"), 4), (s("b"), 2)]),
            (1, vec![(s("a"), 4), (s("b"), 3)]),
            (2, vec![(s("b"), 3)]),
            (3, vec![(s("b"), 3)]),
        ]
    );
    // "a" in batch 1, "b" in batches 2 and 3.
    assert_eq!(calls_without_values.load(Ordering::SeqCst), 3);
}

/// Per user, the items clicked; says when a user times out or logs out.
fn sessions(clicks: DStream<(String, String)>, timeout: Duration) -> DStream<String> {
    clicks.map_with_state(
        Some(timeout),
        |time_ms, user: &String, item: Option<String>, state: &mut KeyState<Vec<String>>| match item {
            Some(item) if item == "logout" => {
                state.remove();
                Some(format!("{user} logged out at {time_ms}"))
            }
            Some(item) => {
                let mut items = state.get().cloned().unwrap_or_default();
                items.push(item);
                let n = items.len();
                state.update(items);
                Some(format!("{user} {n}"))
            }
            None => {
                assert!(state.is_timing_out());
                state.update(vec![s("ignored: the state of a timing-out key is removed")]);
                Some(format!("{user} timed out at {time_ms} after {:?}", state.get().unwrap()))
            }
        },
    )
}

#[test]
fn map_with_state_times_out_keys_without_values_for_longer_than_the_timeout() {
    let job = LocalJob::new(SECOND);
    let input: Vec<Vec<(String, String)>> = vec![
        vec![(s("u1"), s("x")), (s("u2"), s("y"))],
        vec![(s("u1"), s("z"))],
        vec![(s("u3"), s("a")), (s("u3"), s("logout"))],
        vec![],
        vec![],
        vec![],
    ];
    let out = job.collect(sessions(job.queue_stream(input), 2 * SECOND));
    job.run(6).unwrap();
    // Batch i is at (i + 1) s; a key times out once more than 2 s passed since its last value.
    assert_eq!(
        batches(&out),
        vec![
            (0, vec![s("u1 1"), s("u2 1")]),
            (1, vec![s("u1 2")]),
            (2, vec![s("u3 1"), s("u3 logged out at 3000")]),
            (3, vec![s(r#"u2 timed out at 4000 after ["y"]"#)]),
            (4, vec![s(r#"u1 timed out at 5000 after ["x", "z"]"#)]),
            (5, vec![]),
        ]
    );
}

/// Counts of keys per event-time window; items are (key, event time), one part per partition.
fn windowed_counts(
    items: DStream<(String, i64)>,
    spec: Watermark,
    length: Duration,
    slide: Duration,
) -> DStream<Windowed<(String, u64)>> {
    items
        .with_watermark(spec, |(_, time_ms)| *time_ms)
        .map(|timed: Timed<(String, i64)>| timed.map(|(key, _)| (key, 1u64)))
        .reduce_by_key_and_event_window(length, slide, |a, b| a + b)
}

fn window(start_ms: i64, end_ms: i64, key: &str, count: u64) -> Windowed<(String, u64)> {
    Windowed { start_ms, end_ms, item: (s(key), count) }
}

#[test]
fn a_tumbling_window_closes_when_the_slowest_partitions_watermark_passes_it_and_late_items_are_dropped() {
    let job = LocalJob::new(SECOND);
    let spec = Watermark::new(Duration::ZERO);
    let late = spec.late_records();
    let parts = vec![
        vec![pairs(&[&[("a", 1_000), ("a", 2_000)]]).remove(0), pairs(&[&[("b", 500)]]).remove(0)],
        vec![pairs(&[&[("a", 12_000)]]).remove(0), pairs(&[&[("b", 3_000)]]).remove(0)],
        // Partition 0 is at 12 s; partition 1 reaching 11 s moves the watermark to 11 s.
        vec![vec![], pairs(&[&[("b", 11_000)]]).remove(0)],
        vec![pairs(&[&[("a", 4_000)]]).remove(0), vec![]],
    ];
    let out = job.collect(windowed_counts(job.queue_stream_parts(parts), spec, 10 * SECOND, 10 * SECOND));
    job.run(4).unwrap();
    assert_eq!(
        batches(&out),
        vec![(0, vec![]), (1, vec![]), (2, vec![window(0, 10_000, "a", 2), window(0, 10_000, "b", 2)]), (3, vec![])]
    );
    assert_eq!(late.load(Ordering::SeqCst), 1, "a at 4 s came after the watermark reached 11 s");
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let input = || {
        let mut parts = vec![
            vec![pairs(&[&[("a", 1_000)]]).remove(0), pairs(&[&[("b", 1_000)]]).remove(0)],
            vec![pairs(&[&[("a", 15_000)]]).remove(0), vec![]],
            vec![pairs(&[&[("a", 16_000)]]).remove(0), vec![]],
        ];
        parts.extend((0..4).map(|_| vec![vec![], vec![]]));
        parts
    };
    let idle = LocalJob::new(SECOND);
    let spec = Watermark::new(Duration::ZERO).idle_after(2 * SECOND);
    let with_idle = idle.collect(windowed_counts(idle.queue_stream_parts(input()), spec, 10 * SECOND, 10 * SECOND));
    idle.run(7).unwrap();
    // Partition 1 last had records at batch time 1 s: idle from 4 s (more than 2 s later), when
    // partition 0 alone (at 16 s) sets the watermark.
    let closed: Vec<_> = batches(&with_idle).into_iter().filter(|(_, items)| !items.is_empty()).collect();
    assert_eq!(closed, vec![(3, vec![window(0, 10_000, "a", 1), window(0, 10_000, "b", 1)])]);

    let held = LocalJob::new(SECOND);
    let without_idle = held.collect(windowed_counts(
        held.queue_stream_parts(input()),
        Watermark::new(Duration::ZERO),
        10 * SECOND,
        10 * SECOND,
    ));
    held.run(7).unwrap();
    assert!(
        batches(&without_idle).iter().all(|(_, items)| items.is_empty()),
        "partition 1 holds the watermark at 1 s: {:?}",
        batches(&without_idle)
    );
}

#[test]
fn sliding_windows_hold_each_item_in_every_window_over_it_and_late_items_can_go_to_a_side_output() {
    let job = LocalJob::new(SECOND);
    let input = || pairs(&[&[("k", 7_000)], &[("k", 12_000), ("k", 5_500)], &[("k", 30_000)]]);
    let spec = Watermark::new(SECOND).keep_late();
    let out = job.collect(windowed_counts(job.queue_stream(input()), spec, 10 * SECOND, 5 * SECOND));
    // The same source again, for its late items only.
    let side_spec = Watermark::new(SECOND).keep_late();
    let late_count = side_spec.late_records();
    let late = job.collect(
        job.queue_stream(input())
            .with_watermark(side_spec, |(_, time_ms)| *time_ms)
            .filter(|timed| timed.late)
            .map(|timed| timed.item),
    );
    job.run(3).unwrap();
    // Watermarks after each batch: 6 s, 11 s, 29 s (lateness 1 s); 5.5 s is late in batch 1.
    assert_eq!(
        batches(&out),
        vec![
            (0, vec![]),
            (1, vec![window(0, 10_000, "k", 1)]),
            (2, vec![window(5_000, 15_000, "k", 2), window(10_000, 20_000, "k", 1)]),
        ]
    );
    assert_eq!(batches(&late), vec![(0, vec![]), (1, vec![(s("k"), 5_500)]), (2, vec![])]);
    assert_eq!(late_count.load(Ordering::SeqCst), 1);
}

#[test]
fn top_k_per_window_keeps_each_windows_greatest() {
    let job = LocalJob::new(SECOND);
    let input = pairs(&[
        &[("a", 1_000), ("b", 1_000), ("b", 2_000), ("c", 3_000), ("c", 4_000), ("c", 11_000)],
        &[("z", 25_000)],
    ]);
    let top = job.collect(
        windowed_counts(job.queue_stream(input), Watermark::new(Duration::ZERO), 10 * SECOND, 10 * SECOND)
            .top_k_per_window(2, |x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0))),
    );
    job.run(2).unwrap();
    assert_eq!(
        batches(&top),
        vec![
            // Ties go to the first in the alphabet.
            (0, vec![window(0, 10_000, "b", 2), window(0, 10_000, "c", 2)]),
            (1, vec![window(10_000, 20_000, "c", 1)]),
        ]
    );
}

#[test]
fn event_time_windows_must_slide_by_a_divisor_of_their_length() {
    let job = LocalJob::new(SECOND);
    let stream = windowed_counts(job.queue_stream(Vec::new()), Watermark::new(SECOND), 10 * SECOND, 3 * SECOND);
    let _ = job.collect(stream);
    let error = job.run(1).unwrap_err();
    assert!(
        matches!(&error, StreamError::Invalid(problems) if problems[0].contains("multiple of the slide")),
        "{error}"
    );
}

/// Every kind of stateful operator, all output as text, over two partitions.
fn stateful_job(job: &LocalJob) -> Vec<Collected<String>> {
    let input: Vec<Vec<Vec<(String, i64)>>> = (0..12i64)
        .map(|b| {
            (0..2i64)
                .map(|p| {
                    (0..(b * 7 + p * 3) % 5)
                        .map(|i| (format!("k{}", (b * 3 + i * 5 + p) % 4), 1_000 * b + 300 * i + p * 700))
                        .collect()
                })
                .collect()
        })
        .collect();
    let source = || job.queue_stream_parts(input.clone());
    let text = |stream: DStream<String>| job.collect(stream);
    vec![
        text(source().map(|(k, _)| k).window(3 * SECOND, 2 * SECOND).map(|k| k.to_string())),
        text(
            source()
                .map(|(k, _)| (k, 1i64))
                .reduce_by_key_and_window(|a, b| a + b, Some(Box::new(|a, b| a - b)), 4 * SECOND, SECOND)
                .map(|kv| format!("{kv:?}")),
        ),
        text(
            source()
                .update_state_by_key(|values: Vec<i64>, old: Option<i64>| {
                    let total = old.unwrap_or(0) + values.len() as i64;
                    (total < 6).then_some(total)
                })
                .map(|kv| format!("{kv:?}")),
        ),
        text(sessions(source().map(|(k, t)| (k, format!("item{}", t % 3))), 2 * SECOND)),
        text(
            windowed_counts(
                source(),
                Watermark::new(500 * Duration::from_millis(1)).idle_after(SECOND),
                4 * SECOND,
                2 * SECOND,
            )
            .map(|w| format!("{w:?}")),
        ),
    ]
}

#[test]
fn a_job_resumed_from_its_checkpoint_after_any_batch_gives_what_the_uninterrupted_job_gave() {
    let whole = LocalJob::new(SECOND);
    let expected = stateful_job(&whole);
    whole.run(12).unwrap();
    let expected: Vec<Vec<(u64, Vec<String>)>> = expected.iter().map(batches).collect();
    assert!(
        expected.iter().all(|output| output.iter().any(|(_, items)| !items.is_empty())),
        "every output gives something"
    );

    for crash_after in 0..11 {
        let resumed = LocalJob::new(SECOND);
        let outputs = stateful_job(&resumed);
        resumed.resume(&whole.checkpoint_after(crash_after)).unwrap();
        resumed.run(11 - crash_after).unwrap();
        for (index, (output, expected)) in outputs.iter().zip(&expected).enumerate() {
            let after: Vec<_> = expected.iter().filter(|(id, _)| *id > crash_after).cloned().collect();
            assert_eq!(batches(output), after, "output {index} resumed after batch {crash_after}");
        }
    }
}

#[test]
fn a_checkpoint_of_another_job_is_refused_with_what_differs() {
    let first = LocalJob::new(SECOND);
    let _ = first.collect(first.queue_stream(vec![vec![1u32]]).window(2 * SECOND, SECOND));
    first.run(3).unwrap();
    let other = LocalJob::new(SECOND);
    let _ = other.collect(
        other
            .queue_stream(vec![vec![(s("k"), 1u32)]])
            .update_state_by_key(|v: Vec<u32>, old: Option<u32>| Some(old.unwrap_or(0) + v.len() as u32)),
    );
    let error = other.resume(&first.checkpoint_after(2)).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(r#"["window"]"#) && message.contains(r#"["update_state_by_key"]"#), "{message}");
}

#[test]
fn an_event_time_window_needs_a_watermark_upstream() {
    let job = LocalJob::new(SECOND);
    let unstamped = job
        .queue_stream(vec![vec![(s("k"), 1u64)]])
        .map(|item| Timed { time_ms: 0, late: false, item })
        .reduce_by_key_and_event_window(10 * SECOND, 10 * SECOND, |a, b| a + b);
    let _ = job.collect(unstamped);
    let error = job.run(1).unwrap_err();
    assert!(error.to_string().contains("apply with_watermark upstream"), "{error}");
}

#[test]
fn changes_saved_for_other_operators_are_refused_before_any_snapshot() {
    let first = LocalJob::new(SECOND).snapshot_every(100);
    let _ = first.collect(first.queue_stream(vec![vec![1u32]]).window(2 * SECOND, SECOND));
    first.run(2).unwrap();
    let other = LocalJob::new(SECOND);
    let _ = other.collect(
        other
            .queue_stream(vec![vec![(s("k"), 1u32)]])
            .update_state_by_key(|v: Vec<u32>, old: Option<u32>| Some(old.unwrap_or(0) + v.len() as u32)),
    );
    let checkpoint = first.checkpoint_after(1);
    assert!(checkpoint.snapshot.is_none(), "only deltas");
    let error = other.resume(&checkpoint).unwrap_err().to_string();
    assert!(error.contains("a window") && error.contains(r#"["update_state_by_key"]"#), "{error}");
}

#[test]
fn a_stream_without_items_yet_does_not_hold_back_the_watermark_of_one_with_items() {
    let job = LocalJob::new(SECOND);
    let clicks = job.queue_stream(pairs(&[&[("a", 1_000)], &[("a", 12_000)]]));
    let views: DStream<(String, i64)> = job.queue_stream(vec![vec![], vec![]]);
    let stamp = |stream: DStream<(String, i64)>| {
        stream.with_watermark(Watermark::new(Duration::ZERO), |(_, t)| *t).map(|t| t.map(|(k, _)| (k, 1u64)))
    };
    let out = job.collect(stamp(clicks).union(stamp(views)).reduce_by_key_and_event_window(
        10 * SECOND,
        10 * SECOND,
        |a, b| a + b,
    ));
    job.run(2).unwrap();
    assert_eq!(batches(&out), vec![(0, vec![]), (1, vec![window(0, 10_000, "a", 1)])]);
}

#[test]
fn event_times_at_the_ends_of_i64_neither_panic_nor_make_windows() {
    let job = LocalJob::new(SECOND);
    let input = vec![vec![(s("max"), i64::MAX - 5), (s("min"), i64::MIN + 5), (s("ok"), 1_000)]];
    let out =
        job.collect(windowed_counts(job.queue_stream(input), Watermark::new(Duration::ZERO), 10 * SECOND, 5 * SECOND));
    job.run(1).unwrap();
    // The watermark leaps to the greatest time (as in Spark); windows whose bounds do not fit
    // in i64 are not made, the others close.
    let items: Vec<(i64, String)> = batches(&out)[0].1.iter().map(|w| (w.start_ms, w.item.0.clone())).collect();
    assert_eq!(items, vec![(-5_000, s("ok")), (0, s("ok"))]);
}

/// Batches large enough that `map_with_state` works through its keys on several threads: the
/// outputs keep the items' order, each key sees its values in order, and a job resumed after
/// any batch goes on exactly as the uninterrupted one.
#[test]
fn map_with_state_on_large_batches_keeps_the_items_order_and_resumes_exactly() {
    // 4 batches of 20,000 items over 997 keys (a prime, so keys spread unevenly over batches);
    // every 7th item of a key removes its state.
    let input: Vec<Vec<(String, u64)>> = (0..4u64)
        .map(|batch| {
            (0..20_000u64).map(|i| (format!("k{}", (batch * 20_000 + i) * 31 % 997), batch * 20_000 + i)).collect()
        })
        .collect();
    // What the job must give, computed here item by item.
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let expected: Vec<(u64, Vec<String>)> = input
        .iter()
        .enumerate()
        .map(|(batch, items)| {
            let out = items
                .iter()
                .map(|(key, value)| {
                    let count = counts.entry(key.clone()).or_default();
                    *count += 1;
                    let line = format!("{key} #{count} {value}");
                    if (*count).is_multiple_of(7) {
                        counts.remove(key);
                    }
                    line
                })
                .collect();
            (batch as u64, out)
        })
        .collect();
    let job_on = |job: &LocalJob| {
        job.collect(job.queue_stream(input.clone()).map_with_state(
            None,
            |_, key: &String, value: Option<u64>, state: &mut KeyState<u64>| {
                let count = state.get().copied().unwrap_or(0) + 1;
                if count % 7 == 0 {
                    state.remove();
                } else {
                    state.update(count);
                }
                Some(format!("{key} #{count} {}", value?))
            },
        ))
    };
    let whole = LocalJob::new(SECOND).snapshot_every(2);
    let out = job_on(&whole);
    whole.run(4).unwrap();
    assert_eq!(batches(&out), expected);
    for crash_after in 0..3 {
        let resumed = LocalJob::new(SECOND).snapshot_every(2);
        let out = job_on(&resumed);
        resumed.resume(&whole.checkpoint_after(crash_after)).unwrap();
        resumed.run(3 - crash_after).unwrap();
        let after: Vec<_> = expected.iter().filter(|(id, _)| *id > crash_after).cloned().collect();
        assert_eq!(batches(&out), after, "resumed after batch {crash_after}");
    }
}
