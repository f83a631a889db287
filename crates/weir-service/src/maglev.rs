//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! prime size M in which each backend owns about M/N slots, and removing one
//! backend moves little more than that backend's own slots.

/// Fills a table of `size` slots (prime, and well above the backend count)
/// with indexes into `names`. Names, not positions, decide the permutation,
/// so every node computes the same table for the same backends. An empty
/// `names` gives an empty table.
pub fn table(names: &[String], size: usize) -> Vec<u32> {
    let equal = vec![1; names.len()];
    weighted_table(names, &equal, size)
}

/// [`table`] with a weight per name: each backend owns about
/// `size * weight / total` slots. Backends take turns as in the paper, but a
/// backend's turn only fills a slot once its accumulated weight reaches the
/// largest weight, so equal weights give exactly [`table`]'s result and a
/// weight of zero owns nothing. All weights zero (or no names) give an empty
/// table. `weights` shorter than `names` count the missing ones as zero.
pub fn weighted_table(names: &[String], weights: &[u32], size: usize) -> Vec<u32> {
    let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(0));
    let heaviest = (0..names.len()).map(weight).max().unwrap_or(0);
    if heaviest == 0 || size < 2 {
        return Vec::new();
    }
    let size_u64 = size as u64;
    let permutations: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325) % size_u64;
            let skip = fnv1a(name.as_bytes(), 0x8422_2325_cbf2_9ce4) % (size_u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut credit = vec![0u64; names.len()];
    let mut entries: Vec<Option<u32>> = vec![None; size];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in permutations.iter().enumerate() {
            credit[i] += weight(i);
            if credit[i] < heaviest {
                continue;
            }
            credit[i] -= heaviest;
            // Each backend takes its next preferred slot that is still free.
            let mut slot = ((offset + next[i] * skip) % size_u64) as usize;
            while entries[slot].is_some() {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % size_u64) as usize;
            }
            entries[slot] = Some(i as u32);
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    entries.into_iter().map(|e| e.unwrap_or(0)).collect()
}

/// FNV-1a with a chosen basis, then a finaliser so nearby names spread.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut hash = basis;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 2)).collect()
    }

    #[test]
    fn every_backend_gets_a_near_equal_share() {
        let names = names(10);
        let table = table(&names, 16381);
        assert_eq!(table.len(), 16381);
        let mut share = [0usize; 10];
        for &b in &table {
            share[b as usize] += 1;
        }
        // Maglev gives each backend floor(M/N) or ceil(M/N) slots.
        assert!(share.iter().all(|&s| (1638..=1639).contains(&s)), "{share:?}");
    }

    #[test]
    fn removing_one_of_a_hundred_backends_moves_few_slots() {
        let all = names(100);
        let before = table(&all, 65537);
        let mut fewer = all.clone();
        let removed = fewer.remove(37);
        let after = table(&fewer, 65537);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| all[**b as usize] != removed && all[**b as usize] != fewer[**a as usize])
            .count();
        let own = before.iter().filter(|b| all[**b as usize] == removed).count();
        // The paper: about 1.6% of slots change owner in all; 1% is the minimum.
        let changed = (moved + own) as f64 / 65537.0;
        assert!(changed < 0.03, "{:.2}% of slots changed", changed * 100.0);
    }

    #[test]
    fn the_table_depends_on_names_not_their_order() {
        let names = names(5);
        let mut reversed = names.clone();
        reversed.reverse();
        let a: Vec<&String> = table(&names, 1021).iter().map(|&i| &names[i as usize]).collect();
        let b: Vec<&String> = table(&reversed, 1021).iter().map(|&i| &reversed[i as usize]).collect();
        // Ties between backends wanting the same slot go by turn order, so
        // only most slots are guaranteed to agree.
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same as f64 / 1021.0 > 0.9, "{same}");
        assert!(table(&[], 1021).is_empty());
    }

    #[test]
    fn weights_divide_the_table_in_proportion_and_zero_owns_nothing() {
        let names = names(4);
        let table = weighted_table(&names, &[1, 2, 3, 0], 65537);
        let mut share = [0usize; 4];
        for &b in &table {
            share[b as usize] += 1;
        }
        assert_eq!(share[3], 0, "weight 0 owns no slot: {share:?}");
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let expected = 65537.0 * w / 6.0;
            assert!((share[i] as f64 - expected).abs() < expected * 0.01, "{share:?}");
        }
        assert!(weighted_table(&names, &[0, 0, 0, 0], 65537).is_empty());
        // Equal weights are the unweighted table, slot for slot.
        assert_eq!(weighted_table(&names, &[5, 5, 5, 5], 1021), super::table(&names, 1021));
    }
}
