//! Dropping a future at a chosen await point: the way a caller's `select!` or timeout drops
//! it, counted in polls rather than time, so that every await point is reached in turn.

use std::future::Future;
use std::task::Poll;

/// Polls `future` until it completes or until it has returned `Pending` `pendings + 1` times,
/// and drops it there: `None` when it was dropped.
pub async fn drop_after<F: Future>(pendings: usize, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending if pending >= pendings => Poll::Ready(None),
        Poll::Pending => {
            pending += 1;
            Poll::Pending
        }
    })
    .await
}
