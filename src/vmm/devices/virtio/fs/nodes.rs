//! The ids a guest holds of a share: its FUSE node ids (with their lookup
//! counts) and file handles, kept beside the passthrough's own so that a
//! checkpoint can write them down and a restored VM's new server can give
//! the guest the same ids for the same files.
//!
//! Until a share is restored, the guest's ids *are* the passthrough's
//! (the table only counts them). A restored share's passthrough is new and
//! numbers its inodes and handles from the start again, so from then on
//! every id is translated: the guest's old ids map to the reopened files,
//! and files it looks up later get fresh guest ids above every old one.
//!
//! The guest is hostile: an id it never got is refused (`EBADF`) once ids
//! are translated (before that, the passthrough refuses it itself), and a
//! `FORGET` of more lookups than it holds only forgets what it holds.

use std::collections::HashMap;

use fuse_backend_rs::api::filesystem::ROOT_ID;

/// One node the guest holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The passthrough's inode.
    pub inner: u64,
    /// Lookups the guest holds (what its `FORGET`s count down).
    pub lookups: u64,
    /// Lookups of `inner` held in the passthrough on the guest's behalf.
    pub inner_lookups: u64,
}

/// One open file or directory of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// The passthrough's handle.
    pub inner: u64,
    /// The guest's node it was opened on.
    pub node: u64,
    /// Its `open(2)` flags.
    pub flags: u32,
    /// A directory (`opendir`), not a file.
    pub dir: bool,
}

/// The guest's ids and what they stand for.
#[derive(Debug, Default)]
pub struct Table {
    /// Translating (a restored share); else guest ids are the passthrough's.
    remapped: bool,
    nodes: HashMap<u64, Node>,
    /// The guest id a passthrough inode was last given.
    by_inner: HashMap<u64, u64>,
    handles: HashMap<u64, Open>,
    /// The next guest id / handle a translating table gives out.
    next_node: u64,
    next_handle: u64,
    /// The options the guest's `FUSE_INIT` offered.
    pub init: Option<u64>,
}

impl Table {
    /// A table whose guest ids are the passthrough's.
    pub fn new() -> Table {
        Table::default()
    }

    /// A table that translates: ids at or above `first_node` /
    /// `first_handle` are given to what the guest opens from now on.
    pub fn remapped(first_node: u64, first_handle: u64) -> Table {
        Table {
            remapped: true,
            next_node: first_node.max(ROOT_ID + 1),
            next_handle: first_handle.max(1),
            ..Table::default()
        }
    }

    pub fn is_remapped(&self) -> bool {
        self.remapped
    }

    /// The passthrough inode of the guest's `node`.
    pub fn inner_node(&self, node: u64) -> Option<u64> {
        if !self.remapped || node == ROOT_ID {
            return Some(node);
        }
        self.nodes.get(&node).map(|n| n.inner)
    }

    /// The passthrough handle of the guest's `handle`.
    pub fn inner_handle(&self, handle: u64) -> Option<u64> {
        if !self.remapped {
            return Some(handle);
        }
        self.handles.get(&handle).map(|o| o.inner)
    }

    /// The passthrough answered a lookup (or a create) with `inner` (0: a
    /// negative entry, which holds nothing): the guest's id for it, one
    /// more lookup held.
    pub fn looked_up(&mut self, inner: u64) -> u64 {
        // The root is the root in both numberings, and never forgotten.
        if inner == 0 || inner == ROOT_ID {
            return inner;
        }
        if let Some(&guest) = self.by_inner.get(&inner) {
            if let Some(n) = self.nodes.get_mut(&guest) {
                n.lookups = n.lookups.saturating_add(1);
                n.inner_lookups = n.inner_lookups.saturating_add(1);
                return guest;
            }
        }
        let guest = if self.remapped {
            let g = self.next_node;
            self.next_node += 1;
            g
        } else {
            inner
        };
        self.nodes.insert(
            guest,
            Node {
                inner,
                lookups: 1,
                inner_lookups: 1,
            },
        );
        self.by_inner.insert(inner, guest);
        guest
    }

    /// Puts back a node of a checkpoint: the guest's `guest` with
    /// `lookups`, now the passthrough's `inner` (looked up once).
    pub fn restored_node(&mut self, guest: u64, inner: u64, lookups: u64) {
        self.nodes.insert(
            guest,
            Node {
                inner,
                lookups,
                inner_lookups: 1,
            },
        );
        self.by_inner.entry(inner).or_insert(guest);
        self.next_node = self.next_node.max(guest.saturating_add(1));
    }

    /// The guest forgets `count` lookups of `node`: what the passthrough
    /// must forget in turn (its inode and count), once the guest holds
    /// none.
    pub fn forget(&mut self, node: u64, count: u64) -> Option<(u64, u64)> {
        let n = self.nodes.get_mut(&node)?;
        n.lookups = n.lookups.saturating_sub(count);
        if !self.remapped {
            // The passthrough counts the same lookups: forget them one for
            // one (it clamps as well).
            n.inner_lookups = n.inner_lookups.saturating_sub(count);
            let forwarded = (n.inner, count);
            if n.lookups == 0 {
                self.remove(node);
            }
            return Some(forwarded);
        }
        if n.lookups > 0 {
            return None;
        }
        let forwarded = (n.inner, n.inner_lookups);
        self.remove(node);
        Some(forwarded)
    }

    fn remove(&mut self, node: u64) {
        if let Some(n) = self.nodes.remove(&node) {
            if self.by_inner.get(&n.inner) == Some(&node) {
                self.by_inner.remove(&n.inner);
                // Another guest id of the same inode (a hard link the
                // checkpoint knew under two names) takes its place.
                if let Some((&other, _)) = self.nodes.iter().find(|(_, o)| o.inner == n.inner) {
                    self.by_inner.insert(n.inner, other);
                }
            }
        }
    }

    /// The passthrough opened `inner` on the guest's `node`: the guest's
    /// handle.
    pub fn opened(&mut self, node: u64, inner: u64, flags: u32, dir: bool) -> u64 {
        let guest = if self.remapped {
            let g = self.next_handle;
            self.next_handle += 1;
            g
        } else {
            inner
        };
        self.handles.insert(
            guest,
            Open {
                inner,
                node,
                flags,
                dir,
            },
        );
        guest
    }

    /// Puts back an open file of a checkpoint.
    pub fn restored_handle(&mut self, guest: u64, open: Open) {
        self.handles.insert(guest, open);
        self.next_handle = self.next_handle.max(guest.saturating_add(1));
    }

    /// The guest released `handle`: the passthrough's, to release.
    pub fn released(&mut self, handle: u64) -> Option<u64> {
        match self.handles.remove(&handle) {
            Some(o) => Some(o.inner),
            None if !self.remapped => Some(handle),
            None => None,
        }
    }

    /// Every node the guest holds, by guest id.
    pub fn nodes(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes.iter().map(|(&g, n)| (g, n))
    }

    /// Every open handle of the guest, by guest handle.
    pub fn handles(&self) -> impl Iterator<Item = (u64, &Open)> {
        self.handles.iter().map(|(&g, o)| (g, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_restored_guest_ids_are_the_passthroughs_and_counted() {
        let mut t = Table::new();
        assert_eq!(t.looked_up(7), 7);
        assert_eq!(t.looked_up(7), 7);
        assert_eq!(t.looked_up(0), 0, "a negative entry holds nothing");
        assert_eq!(t.inner_node(7), Some(7));
        assert_eq!(t.inner_node(99), Some(99), "the passthrough refuses it");
        assert_eq!(t.nodes().count(), 1);
        assert_eq!(t.forget(7, 1), Some((7, 1)));
        assert_eq!(t.nodes().next().unwrap().1.lookups, 1);
        assert_eq!(t.forget(7, 5), Some((7, 5)), "clamped by both sides");
        assert_eq!(t.nodes().count(), 0);
        assert_eq!(t.forget(7, 1), None, "unknown: nothing to forward");
        let h = t.opened(7, 3, libc::O_RDWR as u32, false);
        assert_eq!(h, 3);
        assert_eq!(t.inner_handle(3), Some(3));
        assert_eq!(t.released(3), Some(3));
        assert_eq!(t.handles().count(), 0);
    }

    #[test]
    fn a_restored_table_keeps_old_ids_and_gives_new_ones_above_them() {
        let mut t = Table::remapped(0, 0);
        t.restored_node(40, 2, 3);
        t.restored_handle(
            9,
            Open {
                inner: 1,
                node: 40,
                flags: 0,
                dir: false,
            },
        );
        assert_eq!(t.inner_node(40), Some(2));
        assert_eq!(t.inner_node(ROOT_ID), Some(ROOT_ID));
        assert_eq!(t.inner_node(2), None, "an id the guest never got");
        assert_eq!(t.inner_handle(9), Some(1));
        assert_eq!(t.inner_handle(1), None);
        // The passthrough's inode 2 is the guest's 40 again; a new one gets
        // an id no old one had.
        assert_eq!(t.looked_up(2), 40);
        let fresh = t.looked_up(3);
        assert!(fresh > 40, "{fresh}");
        assert_eq!(t.inner_node(fresh), Some(3));
        let h = t.opened(fresh, 2, 0, true);
        assert!(h > 9);
        // The guest's 4 lookups of 40 go; the passthrough forgets the 2 it
        // holds (1 at restore, 1 since).
        assert_eq!(t.forget(40, 3), None);
        assert_eq!(t.forget(40, 1), Some((2, 2)));
        assert_eq!(t.inner_node(40), None);
        assert_eq!(t.released(9), Some(1));
        assert_eq!(t.released(9), None, "a handle released twice");
    }

    #[test]
    fn two_guest_ids_of_one_inode_survive_each_others_forget() {
        let mut t = Table::remapped(0, 0);
        t.restored_node(10, 5, 1);
        t.restored_node(11, 5, 1);
        assert_eq!(t.forget(10, 1), Some((5, 1)));
        assert_eq!(t.inner_node(11), Some(5));
        assert_eq!(t.looked_up(5), 11);
    }
}
