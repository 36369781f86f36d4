//! Where the engine's CPU work runs: rayon's pool (as many threads as cores, or
//! `RAYON_NUM_THREADS`), never an async worker and never a thread made for one call. The engine
//! computes each run of records on tokio's blocking pool (see `context.rs`); the operators
//! there spread large batches over this pool with [`par_map`] and [`on_each`].

use rayon::iter::{IndexedParallelIterator as _, IntoParallelIterator as _, ParallelIterator as _};

/// Items below which a batch's parts are worked through on the calling thread.
pub(crate) const PARALLEL_FROM_ITEMS: usize = 8_192;

/// `f` on each of `items`, spread over the pool when `parallel`; the results in the items'
/// order. A panic in `f` goes on here, as it would have on the calling thread.
pub(crate) fn par_map<T: Send, R: Send>(items: Vec<T>, parallel: bool, f: &(impl Fn(T) -> R + Sync)) -> Vec<R> {
    if !parallel || items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    items.into_par_iter().map(f).collect()
}

/// `work` on each of `items`, each a task of its own on the pool when `parallel` (for few,
/// large items: shards, outputs); the results in the items' order. A panic in `work` goes on
/// here, as it would have on the calling thread.
pub(crate) fn on_each<T: Send, R: Send>(items: Vec<T>, parallel: bool, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    if !parallel || items.len() <= 1 {
        return items.into_iter().map(work).collect();
    }
    items.into_par_iter().with_max_len(1).map(&work).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_in_parallel_or_not() {
        let items: Vec<usize> = (0..50_000).collect();
        let doubled: Vec<usize> = items.iter().map(|i| i * 2).collect();
        assert_eq!(par_map(items.clone(), true, &|i| i * 2), doubled);
        assert_eq!(par_map(items.clone(), false, &|i| i * 2), doubled);
        assert_eq!(on_each(items, true, |i| i * 2), doubled);
    }
}
