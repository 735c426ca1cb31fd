//! libkmod's binary index (`modules.*.bin`): a trie of keys (module names, aliases) with
//! prioritised values, in the on-disk format 2.1 that `libkmod-index.c` reads.
//!
//! [`IndexNode::insert`] builds the trie exactly as depmod builds it (same prefix splits, same
//! value order on equal priorities) and [`IndexNode::write`] lays the nodes out as depmod does
//! (children first), so the files are byte-identical to depmod's. Keys must be ASCII (the
//! caller checks). Not supported: reading an index back.

use std::collections::btree_map::Entry as Slot;
use std::collections::BTreeMap;

/// Magic number of a libkmod index file.
const INDEX_MAGIC: u32 = 0xB007_F457;
/// Index format version 2.1.
const INDEX_VERSION: u32 = 0x0002_0001;
/// Node offset flags of the index format.
const NODE_PREFIX: u32 = 0x8000_0000;
const NODE_VALUES: u32 = 0x4000_0000;
const NODE_CHILDS: u32 = 0x2000_0000;

/// A node of libkmod's index trie (format 2.1): a compressed key prefix, values sorted by
/// priority, and children by next key byte; the root is the whole index. Built and written exactly as depmod does, so the
/// files come out byte-identical.
#[derive(Default)]
pub struct IndexNode {
    prefix: Vec<u8>,
    /// (priority, value); a new value goes before the first with a priority not below its own.
    values: Vec<(u32, Vec<u8>)>,
    children: BTreeMap<u8, IndexNode>,
}

impl IndexNode {
    /// Adds `value` under `key`; values of one key are kept in priority order, a new value
    /// going before older ones of the same priority (as depmod does).
    pub fn insert(&mut self, key: &[u8], value: &[u8], priority: u32) {
        let mut node = self;
        let mut i = 0;
        loop {
            if let Some(j) =
                (0..node.prefix.len()).find(|&j| key.get(i + j) != Some(&node.prefix[j]))
            {
                node.split(j);
            }
            i += node.prefix.len();
            let Some(&ch) = key.get(i) else {
                node.add_value(value, priority);
                return;
            };
            match node.children.entry(ch) {
                Slot::Vacant(slot) => {
                    let mut child = IndexNode {
                        prefix: key[i + 1..].to_vec(),
                        ..IndexNode::default()
                    };
                    child.add_value(value, priority);
                    slot.insert(child);
                    return;
                }
                Slot::Occupied(slot) => node = slot.into_mut(),
            }
            i += 1;
        }
    }

    /// Keeps `prefix[..j]` here and moves everything else into a child at `prefix[j]`.
    fn split(&mut self, j: usize) {
        let ch = self.prefix[j];
        let child = IndexNode {
            prefix: self.prefix[j + 1..].to_vec(),
            values: std::mem::take(&mut self.values),
            children: std::mem::take(&mut self.children),
        };
        self.prefix.truncate(j);
        self.children.insert(ch, child);
    }

    fn add_value(&mut self, value: &[u8], priority: u32) {
        let at = self
            .values
            .iter()
            .position(|(p, _)| *p >= priority)
            .unwrap_or(self.values.len());
        self.values.insert(at, (priority, value.to_vec()));
    }

    /// The whole index file: header, then the nodes children-first.
    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let root = self.write_node(&mut out);
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }

    /// Writes the children, then this node; returns its offset with the flags.
    fn write_node(&self, out: &mut Vec<u8>) -> u32 {
        let range = self
            .children
            .keys()
            .next()
            .zip(self.children.keys().next_back());
        let child_offsets: Vec<u32> = match range {
            Some((&first, &last)) => (first..=last)
                .map(|c| {
                    self.children
                        .get(&c)
                        .map_or(0, |child| child.write_node(out))
                })
                .collect(),
            None => Vec::new(),
        };
        // Offsets fit the 28-bit field for any real module tree (files of a few MiB).
        let mut offset = out.len() as u32;
        if !self.prefix.is_empty() {
            out.extend_from_slice(&self.prefix);
            out.push(0);
            offset |= NODE_PREFIX;
        }
        if let Some((&first, &last)) = range {
            out.push(first);
            out.push(last);
            for child in child_offsets {
                out.extend_from_slice(&child.to_be_bytes());
            }
            offset |= NODE_CHILDS;
        }
        if !self.values.is_empty() {
            out.extend_from_slice(&(self.values.len() as u32).to_be_bytes());
            for (priority, value) in &self.values {
                out.extend_from_slice(&priority.to_be_bytes());
                out.extend_from_slice(value);
                out.push(0);
            }
            offset |= NODE_VALUES;
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_trie_splits_prefixes_and_orders_values() {
        let mut index = IndexNode::default();
        index.insert(b"abc", b"1", 5);
        index.insert(b"abd", b"2", 1);
        index.insert(b"ab", b"3", 0);
        index.insert(b"abc", b"4", 5);
        assert!(index.prefix.is_empty() && index.values.is_empty());
        let a = &index.children[&b'a'];
        assert_eq!(a.prefix, b"b");
        assert_eq!(a.values, [(0, b"3".to_vec())]);
        assert_eq!(a.children[&b'd'].values, [(1, b"2".to_vec())]);
        let c = &a.children[&b'c'];
        assert_eq!(
            c.values,
            [(5, b"4".to_vec()), (5, b"1".to_vec())],
            "newest first on ties"
        );
        let bytes = index.write();
        assert_eq!(&bytes[..8], &[0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1]);
        let root = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(root & 0xf000_0000, NODE_CHILDS);
        // Root node: first and last child byte, then the one child offset.
        let at = (root & 0x0fff_ffff) as usize;
        assert_eq!(&bytes[at..at + 2], b"aa");
    }
}
