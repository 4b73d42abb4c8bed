//! Rank fusion: merging ranked lists of ids from different retrievers (the
//! vector index, full-text search) into one ranking, by reciprocal rank
//! fusion (Cormack, Clarke & Büttcher, 2009).
//!
//! RRF needs only ranks, not scores, so it can merge a cosine similarity
//! with a BM25 score, which live on scales that cannot be compared.
//!
//! Invariants: the result holds every id of every list exactly once; an id
//! counts at its best (first) rank within a list; the order is a pure
//! function of the lists and `k` (ties broken by id), so the same search
//! gives the same page every time.

use std::collections::HashMap;

/// The usual RRF constant: large enough that the first few ranks of one
/// list do not drown agreement between lists.
pub const DEFAULT_RRF_K: f64 = 60.0;

/// Fuses ranked lists (each best first) into one ranking, best first:
/// each id scores `Σ 1 / (k + rank)` over the lists it appears in, with
/// ranks counted from 1. Equal scores are ordered by ascending id.
///
/// # Panics
/// If `k` is negative or not finite (a programming error: it is a
/// constant, normally [`DEFAULT_RRF_K`]).
pub fn reciprocal_rank_fusion(lists: &[&[i64]], k: f64) -> Vec<(i64, f64)> {
    assert!(k.is_finite() && k >= 0.0, "the RRF constant must be finite and non-negative, not {k}");
    let mut scores: HashMap<i64, f64> = HashMap::new();
    for list in lists {
        // An id listed twice in one list counts once, at its best rank.
        let mut seen = std::collections::HashSet::with_capacity(list.len());
        for (rank, &id) in list.iter().enumerate() {
            if seen.insert(id) {
                *scores.entry(id).or_insert(0.0) += 1.0 / (k + (rank + 1) as f64);
            }
        }
    }
    let mut fused: Vec<(i64, f64)> = scores.into_iter().collect();
    fused.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(fused: &[(i64, f64)]) -> Vec<i64> {
        fused.iter().map(|&(id, _)| id).collect()
    }

    #[test]
    fn known_example() {
        // vector: 1, 2, 3; text: 3, 1, 4.
        let fused = reciprocal_rank_fusion(&[&[1, 2, 3], &[3, 1, 4]], 60.0);
        let expected =
            [(1, 1.0 / 61.0 + 1.0 / 62.0), (3, 1.0 / 63.0 + 1.0 / 61.0), (2, 1.0 / 62.0), (4, 1.0 / 63.0)];
        assert_eq!(ids(&fused), [1, 3, 2, 4]);
        for ((id, score), (want_id, want_score)) in fused.iter().zip(expected) {
            assert_eq!(*id, want_id);
            assert!((score - want_score).abs() < 1e-12, "{id}: {score} != {want_score}");
        }
    }

    #[test]
    fn ties_are_broken_by_ascending_id() {
        // 7 and 5 swap places between the lists: equal scores.
        let fused = reciprocal_rank_fusion(&[&[7, 5], &[5, 7]], 60.0);
        assert_eq!(ids(&fused), [5, 7]);
        assert_eq!(fused[0].1, fused[1].1);
        // Each first in one list: a tie too.
        let fused = reciprocal_rank_fusion(&[&[9], &[2]], 60.0);
        assert_eq!(ids(&fused), [2, 9]);
    }

    #[test]
    fn ids_in_one_list_only_are_kept_below_shared_ones() {
        let fused = reciprocal_rank_fusion(&[&[10, 11, 12], &[12, 13]], 60.0);
        assert_eq!(fused.len(), 4);
        // 12 is in both, so it beats 10 (first, but in one list only); 11
        // and 13 are both second in one list: a tie, broken by id.
        assert_eq!(ids(&fused), [12, 10, 11, 13]);
        let score_of = |id| fused.iter().find(|&&(i, _)| i == id).unwrap().1;
        assert!((score_of(13) - 1.0 / 62.0).abs() < 1e-12);
        assert!((score_of(11) - 1.0 / 62.0).abs() < 1e-12);
    }

    #[test]
    fn a_duplicate_within_a_list_counts_at_its_best_rank() {
        let fused = reciprocal_rank_fusion(&[&[4, 4, 8]], 60.0);
        assert_eq!(fused, [(4, 1.0 / 61.0), (8, 1.0 / 63.0)]);
    }

    #[test]
    fn empty_input_gives_an_empty_ranking() {
        assert!(reciprocal_rank_fusion(&[], 60.0).is_empty());
        assert!(reciprocal_rank_fusion(&[&[], &[]], 60.0).is_empty());
    }

    #[test]
    fn k_zero_is_plain_reciprocal_rank() {
        let fused = reciprocal_rank_fusion(&[&[1, 2]], 0.0);
        assert_eq!(fused, [(1, 1.0), (2, 0.5)]);
    }

    #[test]
    #[should_panic(expected = "RRF constant")]
    fn negative_k_is_refused() {
        reciprocal_rank_fusion(&[&[1]], -1.0);
    }
}
