//! "Did you mean ...?": the closest known word by edit distance.

/// Levenshtein distance between two strings (by chars).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate, if it is close enough to be a plausible typo
/// (distance at most a third of the word, and at least 1 allowed; case-only
/// differences always count).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let d = if c.eq_ignore_ascii_case(word) {
                0
            } else {
                edit_distance(word, c)
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("memory", "memroy"), 2);
        assert_eq!(edit_distance("cpus", "cpu"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let known = ["memory", "cpus", "disk", "depends-on", "copy-from"];
        assert_eq!(did_you_mean("memroy", known), Some("memory"));
        assert_eq!(did_you_mean("cpu", known), Some("cpus"));
        assert_eq!(did_you_mean("depend-on", known), Some("depends-on"));
        assert_eq!(did_you_mean("network", known), None);
        assert_eq!(did_you_mean("Gib", ["GiB", "GB"]), Some("GiB"));
    }
}
