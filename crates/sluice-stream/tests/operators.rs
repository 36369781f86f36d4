//! Every operator and window on batches given in advance (no broker): what each batch gives,
//! and when windows give nothing.

use std::time::Duration;

use sluice_stream::testing::{Collected, LocalJob};
use sluice_stream::StreamError;

const SECOND: Duration = Duration::from_secs(1);

fn batches<T: Clone>(collected: &Collected<T>) -> Vec<(u64, Vec<T>)> {
    collected.lock().unwrap().iter().map(|(info, items)| (info.batch_id, items.clone())).collect()
}

fn words(batches: &[&str]) -> Vec<Vec<String>> {
    batches.iter().map(|b| b.split_whitespace().map(str::to_owned).collect()).collect()
}

#[test]
fn map_flat_map_filter_and_map_partitions_transform_each_batch() {
    let job = LocalJob::new(SECOND);
    let lines = vec![vec!["a b".to_owned(), "c".to_owned()], vec![], vec!["dd e".to_owned()]];
    let out = job.collect(
        job.queue_stream(lines)
            .flat_map(|line: String| line.split(' ').map(str::to_owned).collect::<Vec<_>>())
            .filter(|w| w != "c")
            .map(|w| w.len())
            .map_partitions(|lengths| vec![lengths.iter().sum::<usize>()]),
    );
    job.run(4).unwrap();
    assert_eq!(batches(&out), vec![(0, vec![2]), (1, vec![0]), (2, vec![3]), (3, vec![0])]);
}

#[test]
fn keyed_operators_gather_by_key_in_key_order() {
    let job = LocalJob::new(SECOND);
    let input = words(&["b a b c a b", "z"]);
    let counted = job.collect(job.queue_stream(input.clone()).map(|w| (w, 1u32)).reduce_by_key(|a, b| a + b));
    let by_key = job.collect(job.queue_stream(input.clone()).key_by(|w| w.len()).count_by_key());
    let by_value = job.collect(job.queue_stream(input.clone()).count_by_value());
    let counts = job.collect(job.queue_stream(input).count());
    job.run(2).unwrap();
    let s = |w: &str| w.to_owned();
    assert_eq!(batches(&counted), vec![(0, vec![(s("a"), 2), (s("b"), 3), (s("c"), 1)]), (1, vec![(s("z"), 1)])]);
    assert_eq!(batches(&by_key), vec![(0, vec![(1, 6)]), (1, vec![(1, 1)])]);
    assert_eq!(batches(&by_value), vec![(0, vec![(s("a"), 2), (s("b"), 3), (s("c"), 1)]), (1, vec![(s("z"), 1)])]);
    assert_eq!(batches(&counts), vec![(0, vec![6]), (1, vec![1])]);
}

#[test]
fn union_join_and_top_k() {
    let job = LocalJob::new(SECOND);
    let left = job.queue_stream(vec![vec![(1, "one"), (2, "two"), (1, "uno")]]);
    let right = job.queue_stream(vec![vec![(1, 'x'), (3, 'z'), (1, 'y')]]);
    let joined = job.collect(left.join(right));
    let both = job.collect(job.queue_stream(vec![vec![1, 2]]).union(job.queue_stream(vec![vec![3]])));
    let scores = vec![vec![("a", 5), ("b", 9), ("c", 5), ("d", 1), ("e", 7)]];
    // Greatest count first; ties by name, first in the alphabet first.
    let top = job.collect(
        job.queue_stream(scores).top_k(3, |x: &(&str, i32), y: &(&str, i32)| x.1.cmp(&y.1).then_with(|| y.0.cmp(x.0))),
    );
    job.run(1).unwrap();
    assert_eq!(
        batches(&joined),
        vec![(0, vec![(1, ("one", 'x')), (1, ("one", 'y')), (1, ("uno", 'x')), (1, ("uno", 'y'))])]
    );
    assert_eq!(batches(&both), vec![(0, vec![1, 2, 3])]);
    assert_eq!(batches(&top), vec![(0, vec![("b", 9), ("e", 7), ("a", 5)])]);
}

#[test]
fn a_sliding_window_gives_the_last_batches_every_slide_and_nothing_between() {
    let job = LocalJob::new(SECOND);
    let input: Vec<Vec<u32>> = (0..7).map(|b| vec![b * 10, b * 10 + 1]).collect();
    let windowed = job.collect(job.queue_stream(input).window(3 * SECOND, 2 * SECOND));
    job.run(7).unwrap();
    assert_eq!(
        batches(&windowed),
        vec![(1, vec![0, 1, 10, 11]), (3, vec![10, 11, 20, 21, 30, 31]), (5, vec![30, 31, 40, 41, 50, 51])],
        "output at the end of every second batch, covering the last three"
    );
}

#[test]
fn reduce_by_key_and_window_gives_the_same_with_and_without_an_inverse() {
    // Clicks per item over 4 batches sliding by 2, with items appearing and disappearing.
    let input = words(&["a a b", "b", "c", "a", "", "c c", "b", ""]);
    let run = |inverse: bool| {
        let job = LocalJob::new(SECOND);
        let inverse: Option<Box<dyn Fn(u64, u64) -> u64 + Send>> =
            if inverse { Some(Box::new(|a, b| a - b)) } else { None };
        let out = job.collect(job.queue_stream(input.clone()).map(|w| (w, 1u64)).reduce_by_key_and_window(
            |a, b| a + b,
            inverse,
            4 * SECOND,
            2 * SECOND,
        ));
        job.run(8).unwrap();
        batches(&out)
    };
    let s = |w: &str| w.to_owned();
    let expected = vec![
        (1, vec![(s("a"), 2), (s("b"), 2)]),
        (3, vec![(s("a"), 3), (s("b"), 2), (s("c"), 1)]),
        (5, vec![(s("a"), 1), (s("c"), 3)]),
        // "a" left the window with batch 3: it is gone, not counted as 0.
        (7, vec![(s("b"), 1), (s("c"), 2)]),
    ];
    assert_eq!(run(false), expected, "recomputed over the window");
    assert_eq!(run(true), expected, "added and taken out incrementally");
}

#[test]
fn a_window_not_a_multiple_of_the_interval_is_refused_with_a_reason() {
    let job = LocalJob::new(SECOND);
    let _ = job.collect(job.queue_stream(vec![vec![1]]).window(Duration::from_millis(2500), SECOND));
    let error = job.run(1).unwrap_err();
    assert!(matches!(error, StreamError::Invalid(_)), "{error}");
    assert!(
        error.to_string().contains("2500 ms")
            && error.to_string().contains("multiples of the batch interval (1000 ms)"),
        "{error}"
    );
}

#[test]
fn an_output_error_fails_its_batch() {
    let job = LocalJob::new(SECOND);
    job.queue_stream(vec![vec![1], vec![2]]).foreach_batch(|info, _| {
        if info.batch_id == 1 {
            Err("the sink is down".into())
        } else {
            Ok(())
        }
    });
    let error = job.run(2).unwrap_err();
    assert!(matches!(error, StreamError::Batch { batch_id: 1, .. }), "{error}");
}

#[test]
fn windows_and_joins_count_batches_without_upstream_output_as_empty_ones() {
    let job = LocalJob::new(SECOND);
    // The inner window gives only at odd batches (each its own batch's items); over three
    // batches, the outer one must forget batch 1 by batch 5 although nothing came at 2 and 4.
    let input: Vec<Vec<u32>> = (0..6).map(|b| vec![b]).collect();
    let outer = job.collect(job.queue_stream(input).window(SECOND, 2 * SECOND).window(3 * SECOND, SECOND));
    // A join whose left side gives nothing at batch 0 still lets the right side's window see it.
    let left = job.queue_stream(vec![vec![(1, "a".to_owned())], vec![]]).window(2 * SECOND, 2 * SECOND);
    let right = job.queue_stream(vec![vec![(1, 'x')], vec![(1, 'y')]]).window(2 * SECOND, SECOND);
    let joined = job.collect(left.join(right));
    job.run(6).unwrap();
    assert_eq!(
        batches(&outer),
        vec![(0, vec![]), (1, vec![1]), (2, vec![1]), (3, vec![1, 3]), (4, vec![3]), (5, vec![3, 5])]
    );
    assert_eq!(
        batches(&joined),
        vec![(1, vec![(1, ("a".to_owned(), 'x')), (1, ("a".to_owned(), 'y'))]), (3, vec![]), (5, vec![])]
    );
}

#[test]
fn tee_computes_a_stream_once_per_batch_for_two_outputs() {
    let job = LocalJob::new(SECOND);
    let computed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&computed);
    let (words, lengths) = job
        .queue_stream(words(&["a bb", "ccc", ""]))
        .map(move |w| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            w
        })
        .tee();
    let words = job.collect(words);
    let lengths = job.collect(lengths.map(|w| w.len()));
    job.run(3).unwrap();
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 3, "each word mapped once");
    assert_eq!(
        batches(&words),
        vec![(0, vec!["a".to_owned(), "bb".to_owned()]), (1, vec!["ccc".to_owned()]), (2, vec![])]
    );
    assert_eq!(batches(&lengths), vec![(0, vec![1, 2]), (1, vec![3]), (2, vec![])]);

    // A side without an output does not hold the other back.
    let job = LocalJob::new(SECOND);
    let (used, _unused) = job.queue_stream(vec![vec![1], vec![2]]).tee();
    let used = job.collect(used);
    job.run(2).unwrap();
    assert_eq!(batches(&used), vec![(0, vec![1]), (1, vec![2])]);
}

/// A large batch is mapped on the compute pool (rayon's threads, free to share the parts out;
/// how many of them take a part is up to its scheduling), never on the thread that runs the job.
#[test]
fn large_batches_are_mapped_on_the_compute_pool_and_keep_their_parts_in_order() {
    let job = LocalJob::new(SECOND);
    // 4 parts of 5,000: above the size worked through on one thread.
    let parts: Vec<Vec<u64>> = (0..4u64).map(|p| (p * 5_000..(p + 1) * 5_000).collect()).collect();
    let workers = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let seen = std::sync::Arc::clone(&workers);
    let out = job.collect(
        job.queue_stream_parts(vec![parts])
            .map(move |n| {
                seen.lock().unwrap().insert(rayon::current_thread_index());
                n * 2
            })
            .filter(|n| n % 3 != 0)
            .flat_map(|n| [n, n + 1]),
    );
    job.run(1).unwrap();
    let expected: Vec<u64> = (0..20_000u64).map(|n| n * 2).filter(|n| n % 3 != 0).flat_map(|n| [n, n + 1]).collect();
    assert_eq!(batches(&out), vec![(0, expected)], "the same items in the same order as one thread gives");
    let workers = workers.lock().unwrap();
    assert!(!workers.is_empty() && workers.iter().all(Option::is_some), "mapped by pool threads only: {workers:?}");
}
