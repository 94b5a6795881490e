//! Local reads of the committed catalog, and watches on it.

use super::*;

/// Reads the committed catalog on this node. Reads are local and may be stale (this node
/// may lag the leader); use them for watching and for state that tolerates staleness, and
/// go through the leader for anything that must be current.
#[derive(Clone)]
pub struct CatalogReader {
    pub(super) shared: Arc<Shared>,
}

impl CatalogReader {
    /// How many votes this node has saved since it started (see the log store).
    pub(crate) fn votes_saved(&self) -> u64 {
        self.shared.votes_saved.load(Ordering::SeqCst)
    }

    pub(super) fn read_catalog<T>(
        &self,
        read: impl FnOnce(
            &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        ) -> Result<T, MetaStoreError>,
    ) -> Result<T, MetaStoreError> {
        let path = &*self.shared.path;
        let transaction = self
            .shared
            .database
            .begin_read()
            .map_err(database_error(path))?;
        let table = transaction
            .open_table(CATALOG)
            .map_err(database_error(path))?;
        read(&table)
    }

    /// The value of `key` and its version, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<VersionedValue>, MetaStoreError> {
        let path = &*self.shared.path;
        self.read_catalog(
            |table| match table.get(key).map_err(database_error(path))? {
                Some(guard) => {
                    decode(path, guard.value(), || format!("catalog key {key:?}")).map(Some)
                }
                None => Ok(None),
            },
        )
    }

    /// Up to `limit` keys starting with `prefix`, in key order, with their values.
    pub fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, MetaStoreError> {
        let path = &*self.shared.path;
        self.read_catalog(|table| {
            let mut found = Vec::new();
            for item in table.range(prefix..).map_err(database_error(path))? {
                if found.len() >= limit {
                    break;
                }
                let (key, bytes) = item.map_err(database_error(path))?;
                let key = key.value();
                // Keys sharing the prefix are contiguous in key order: the first one that
                // does not share it ends the list.
                if !key.starts_with(prefix) {
                    break;
                }
                let value = decode(path, bytes.value(), || format!("catalog key {key:?}"))?;
                found.push((key.to_string(), value));
            }
            Ok(found)
        })
    }

    /// A page of the keys under `prefix` after `start_after`, with keys that hold
    /// `delimiter` past the prefix rolled up into common prefixes (see
    /// [`crate::api::ScanRequest`]). One read transaction; a subtree rolled up into a
    /// common prefix is skipped with one seek, not read key by key.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: Option<char>,
        limit: usize,
    ) -> Result<crate::api::ScanPage, MetaStoreError> {
        use std::ops::Bound;
        let path = &*self.shared.path;
        // The key just past every key that starts with `rolled_up` (which ends with the
        // delimiter): the delimiter's successor in its place. ASCII delimiters only.
        let past = |rolled_up: &str, delimiter: char| -> String {
            let mut next = rolled_up[..rolled_up.len() - delimiter.len_utf8()].to_string();
            next.push(char::from_u32(delimiter as u32 + 1).unwrap_or(char::MAX));
            next
        };
        self.read_catalog(|table| {
            let mut page = crate::api::ScanPage::default();
            let mut lower: Bound<String> = match start_after {
                Some(after) if after >= prefix => match delimiter {
                    Some(delimiter) if after.ends_with(delimiter) && after.len() > prefix.len() => {
                        Bound::Included(past(after, delimiter))
                    }
                    _ => Bound::Excluded(after.to_string()),
                },
                _ => Bound::Included(prefix.to_string()),
            };
            let mut returned = 0usize;
            let mut value_bytes = 0usize;
            'seek: loop {
                let range = table
                    .range::<&str>((lower.as_ref().map(String::as_str), Bound::<&str>::Unbounded))
                    .map_err(database_error(path))?;
                for item in range {
                    let (key, bytes) = item.map_err(database_error(path))?;
                    let key = key.value();
                    if !key.starts_with(prefix) {
                        break 'seek;
                    }
                    if returned >= limit || value_bytes >= crate::api::MAX_SCAN_PAGE_BYTES {
                        page.next_start_after = page
                            .entries
                            .last()
                            .map(|(key, _)| key.clone())
                            .into_iter()
                            .chain(page.common_prefixes.last().cloned())
                            .max();
                        break 'seek;
                    }
                    let rest = &key[prefix.len()..];
                    if let Some(delimiter) = delimiter
                        && let Some(position) = rest.find(delimiter)
                    {
                        let rolled_up = &key[..prefix.len() + position + delimiter.len_utf8()];
                        page.common_prefixes.push(rolled_up.to_string());
                        returned += 1;
                        lower = Bound::Included(past(rolled_up, delimiter));
                        continue 'seek;
                    }
                    value_bytes += bytes.value().len();
                    let value = decode(path, bytes.value(), || format!("catalog key {key:?}"))?;
                    page.entries.push((key.to_string(), value));
                    returned += 1;
                }
                break;
            }
            Ok(page)
        })
    }

    /// The number of keys in the catalog.
    pub fn len(&self) -> Result<usize, MetaStoreError> {
        let path = &*self.shared.path;
        let count = self.read_catalog(|table| table.len().map_err(database_error(path)))?;
        // Only a 32-bit board with over four billion keys would saturate.
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Whether the catalog has no key.
    pub fn is_empty(&self) -> Result<bool, MetaStoreError> {
        Ok(self.len()? == 0)
    }

    /// The log index of the last applied entry (0 before anything is applied): the catalog
    /// reflects every command up to it.
    pub fn last_applied_index(&self) -> u64 {
        self.shared.last_applied_index.load(Ordering::Acquire)
    }

    /// Changes under `prefix`, in log order, from now on (deleting a missing key is not a
    /// change). To follow a part of the catalog, watch first, then read it: a change whose
    /// version is not above the version read for its key is already reflected. A watcher
    /// that falls behind, like one that sees [`Change::Reset`], must read again
    /// ([`crate::watch`]).
    pub fn watch(&self, prefix: &str) -> Watch {
        self.shared.watches.watch(prefix)
    }
}
