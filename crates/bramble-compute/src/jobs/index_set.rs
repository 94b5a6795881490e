//! A set of task indices kept as sorted, disjoint ranges: a checkpoint of 100,000
//! finished tasks is a few bytes when they finished roughly in order.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IndexSet {
    /// Half-open ranges `[start, end)`, sorted, never touching.
    ranges: Vec<(u32, u32)>,
}

impl IndexSet {
    pub fn contains(&self, index: u32) -> bool {
        let at = self.ranges.partition_point(|(_, end)| *end <= index);
        self.ranges
            .get(at)
            .is_some_and(|(start, _)| *start <= index)
    }

    /// Adds `index`; false if it was already there.
    pub fn insert(&mut self, index: u32) -> bool {
        let at = self.ranges.partition_point(|(_, end)| *end < index);
        if let Some((start, end)) = self.ranges.get_mut(at) {
            if *start <= index && index < *end {
                return false;
            }
            if *end == index {
                *end += 1;
                // Join the next range if the gap closed.
                if let Some(&(next_start, next_end)) = self.ranges.get(at + 1)
                    && next_start == index + 1
                {
                    self.ranges[at].1 = next_end;
                    self.ranges.remove(at + 1);
                }
                return true;
            }
            if *start == index + 1 {
                *start = index;
                return true;
            }
        }
        self.ranges.insert(at, (index, index + 1));
        true
    }

    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(start, end)| u64::from(end - start))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The indices below `count` that are not in the set, in order.
    pub fn missing_below(&self, count: u32) -> Vec<u32> {
        let mut missing = Vec::new();
        let mut next = 0u32;
        for &(start, end) in &self.ranges {
            if start >= count {
                break;
            }
            missing.extend(next..start);
            next = end;
        }
        if next < count {
            missing.extend(next..count);
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_membership_holds() {
        let mut set = IndexSet::default();
        for index in [5, 3, 4, 0, 9, 1, 2] {
            assert!(set.insert(index));
        }
        assert!(!set.insert(4));
        assert_eq!(set.ranges, vec![(0, 6), (9, 10)]);
        assert_eq!(set.len(), 7);
        assert!(set.contains(5) && set.contains(9) && !set.contains(6));
        assert_eq!(set.missing_below(11), vec![6, 7, 8, 10]);
        let mut reverse = IndexSet::default();
        for index in (0..1000).rev() {
            reverse.insert(index);
        }
        assert_eq!(reverse.ranges, vec![(0, 1000)]);
    }
}
