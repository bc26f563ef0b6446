//! Sorting for the leader and the sender thread with one copy of the sort algorithm.
//!
//! Each call of the standard library's `sort*` with its own element type or comparison is a
//! separate copy of a few kilobytes of sorting code; the library's sorts were ~150 KB of
//! `libappsignal.so` (`docs/benchmarks.md`, "Size of `libappsignal.so`"). Here the algorithm runs once,
//! on indices, through a `dyn` comparison; each caller only adds its comparison and a small
//! permutation step. Sorts here are stable. None of them is on an app thread: the comparison is
//! an indirect call, which is fine for windows, payloads and host metrics.

use std::cmp::Ordering;

/// Sorts `items` stably by `compare`.
pub fn sort_by<T>(items: &mut [T], mut compare: impl FnMut(&T, &T) -> Ordering) {
    if items.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    sort_indices(&mut order, &mut |a, b| compare(&items[a], &items[b]));
    permute(items, &mut order);
}

/// Sorts `items` stably by the key `key` gives.
pub fn sort_by_key<T, K: Ord>(items: &mut [T], mut key: impl FnMut(&T) -> K) {
    sort_by(items, |a, b| key(a).cmp(&key(b)));
}

/// Sorts `items` by their order.
pub fn sort<T: Ord>(items: &mut [T]) {
    sort_by(items, T::cmp);
}

/// The one instantiation of the sort: indices ordered by `compare`, ties by index (stable).
fn sort_indices(order: &mut [usize], compare: &mut dyn FnMut(usize, usize) -> Ordering) {
    order.sort_unstable_by(|&a, &b| compare(a, b).then(a.cmp(&b)));
}

/// Moves `items[order[i]]` to `i` for every `i`, following the permutation's cycles (each item
/// moves once); `order` is left as the identity.
fn permute<T>(items: &mut [T], order: &mut [usize]) {
    for start in 0..items.len() {
        let mut at = start;
        while order[at] != start {
            let from = order[at];
            items.swap(at, from);
            order[at] = at;
            at = from;
        }
        order[at] = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_the_standard_library_stable_sort() {
        // A simple generator (no dependency): many lengths, many duplicates.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in (0..40).chain([100, 1_000, 5_000]) {
            let items: Vec<(u64, usize)> = (0..len).map(|i| (next() % 17, i)).collect();
            let mut expected = items.clone();
            expected.sort_by_key(|&(k, _)| k);
            let mut ours = items.clone();
            // The second field (the original position) shows stability.
            sort_by_key(&mut ours, |&(k, _)| k);
            assert_eq!(ours, expected, "len {len}");
            let mut ours = items.clone();
            sort_by(&mut ours, |a, b| b.0.cmp(&a.0));
            expected.sort_by_key(|&(k, _)| std::cmp::Reverse(k));
            assert_eq!(ours, expected, "len {len}, reversed");
        }
        let mut words = vec![
            "pear".to_owned(),
            "apple".into(),
            "fig".into(),
            "apple".into(),
        ];
        sort(&mut words);
        assert_eq!(words, ["apple", "apple", "fig", "pear"]);
    }
}
