//! One shared directory as the FUSE server sees it: fuse-backend-rs's
//! passthrough file system, behind a policy layer that husk owns.
//!
//! The passthrough resolves every name relative to an `O_PATH` handle of
//! its parent, one component at a time with `O_NOFOLLOW` (names holding `/`
//! are refused, `..` of the share's root is the root itself), so a lookup
//! cannot leave the tree; symlinks are returned to the guest to resolve,
//! never followed on the host. What the layer here adds:
//!
//! - **read-only shares** (`ro` bind mounts): every request that would
//!   change the tree (open for writing or truncating, create, mknod, mkdir,
//!   symlink, link, unlink, rmdir, rename, setattr, setxattr, removexattr,
//!   fallocate, write, copy_file_range into it, ioctl) fails with `EROFS`
//!   on the host side: a guest that remounts its mount read-write still
//!   cannot change a file.
//!
//! - **id mapping** (`linux.uidMappings` / `gidMappings`, [`IdMaps`]): the
//!   caller's ids of a request that creates a file become host ids (an
//!   unmapped one gets `EOVERFLOW`), a chown's ids too (`EINVAL` when
//!   unmapped), and every attribute the guest gets back carries container
//!   ids (`nobody` for a host id outside the map).
//!
//! Everything else is passed through unchanged.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use serde::{Deserialize, Serialize};

use super::idmap::IdMaps;
use super::nodes::Table;

/// What husk adds to the passthrough's `FUSE_INIT` answer: large writes
/// (`FUSE_BIG_WRITES`, `FUSE_MAX_PAGES`).
const LARGE_REQUESTS: FsOptions = FsOptions::BIG_WRITES.union(FsOptions::MAX_PAGES);

/// `open(2)` flags that ask for write access or change the file.
const WRITE_FLAGS: u32 = (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32;

/// Permission bits ([`Share::not_theirs_check`]).
const READ: u32 = 4;
const WRITE: u32 = 2;

/// The permission bits an `open(2)` with `flags` needs.
fn access_wanted(flags: u32) -> u32 {
    let mode = flags & libc::O_ACCMODE as u32;
    let mut want = match mode {
        m if m == libc::O_WRONLY as u32 => WRITE,
        m if m == libc::O_RDWR as u32 => READ | WRITE,
        _ => READ,
    };
    if flags & libc::O_TRUNC as u32 != 0 {
        want |= WRITE;
    }
    want
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// A shared directory: the passthrough and its policy.
pub struct Share {
    inner: PassthroughFs,
    read_only: bool,
    ids: IdMaps,
    /// The guest's node ids and handles ([`super::nodes`]).
    table: Mutex<Table>,
    /// The table translates ids (a restored share): set at construction.
    remapped: bool,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Share {
    pub fn new(inner: PassthroughFs, read_only: bool, ids: IdMaps) -> Share {
        Share {
            inner,
            read_only,
            ids,
            table: Mutex::new(Table::new()),
            remapped: false,
        }
    }

    /// A share put back from a checkpoint: every node of `state` looked up
    /// again by its path, one component at a time as the guest would, each
    /// open file opened again; the guest's ids are translated from now on.
    pub fn restored(
        inner: PassthroughFs,
        read_only: bool,
        ids: IdMaps,
        state: &ShareState,
    ) -> Result<Share, StateError> {
        let share = Share {
            inner,
            read_only,
            ids,
            table: Mutex::new(Table::remapped(0, 0)),
            remapped: true,
        };
        let ctx = Context::default();
        if let Some(bits) = state.init {
            share
                .inner
                .init(FsOptions::from_bits_truncate(bits))
                .map_err(StateError::Root)?;
            share.table().init = Some(bits);
        }
        for node in &state.nodes {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&node.path));
            let missing = |source| StateError::Missing {
                path: path.clone(),
                source,
            };
            let mut at = ROOT_ID;
            let mut kind = libc::S_IFDIR;
            for name in node.path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
                let name = CString::new(name)
                    .map_err(|_| missing(io::Error::from_raw_os_error(libc::EINVAL)))?;
                let entry = share.inner.lookup(&ctx, at, &name).map_err(missing)?;
                if entry.inode == 0 {
                    return Err(missing(io::Error::from_raw_os_error(libc::ENOENT)));
                }
                // The walk holds only the last name's lookup.
                if at != ROOT_ID {
                    share.inner.forget(&ctx, at, 1);
                }
                at = entry.inode;
                kind = entry.attr.st_mode & libc::S_IFMT;
            }
            if at == ROOT_ID {
                continue;
            }
            if kind != node.kind {
                share.inner.forget(&ctx, at, 1);
                return Err(StateError::Changed { path });
            }
            share.table().restored_node(node.id, at, node.lookups);
        }
        for h in &state.handles {
            let inner = share
                .table()
                .inner_node(h.node)
                .ok_or(StateError::Dangling {
                    fh: h.fh,
                    node: h.node,
                })?;
            let path = || {
                state
                    .nodes
                    .iter()
                    .find(|n| n.id == h.node)
                    .map(|n| PathBuf::from(std::ffi::OsStr::from_bytes(&n.path)))
                    .unwrap_or_else(|| PathBuf::from("/"))
            };
            let reopened = if h.dir {
                share.inner.opendir(&ctx, inner, h.flags).map(|(fh, _)| fh)
            } else {
                share
                    .inner
                    .open(&ctx, inner, h.flags & !CREATING_FLAGS, 0)
                    .map(|(fh, _, _)| fh)
            };
            let fh = reopened
                .and_then(|fh| fh.ok_or_else(ebadf))
                .map_err(|source| StateError::Reopen {
                    path: path(),
                    source,
                })?;
            share.table().restored_handle(
                h.fh,
                super::nodes::Open {
                    inner: fh,
                    node: h.node,
                    flags: h.flags,
                    dir: h.dir,
                },
            );
        }
        Ok(share)
    }

    /// What the guest holds of this share, for a checkpoint (with the VM
    /// stopped: nothing changes the table meanwhile). A node is named by
    /// the path its handle has now (`/proc/self/fd`), checked to still
    /// name the same file; a node no path names is left out when the guest
    /// only knows it (it gets `EBADF` for it after the restore, as for a
    /// file removed on the host) and fails the checkpoint when the guest
    /// holds it open.
    pub fn save(&self) -> Result<ShareState, StateError> {
        let root = self
            .inner
            .readlinkat_proc_file(ROOT_ID)
            .map_err(StateError::Root)?;
        let table = self.table();
        let open_nodes: std::collections::HashSet<u64> =
            table.handles().map(|(_, o)| o.node).collect();
        let mut state = ShareState {
            init: table.init,
            ..ShareState::default()
        };
        for (id, node) in table.nodes() {
            match self.path_of(&root, node.inner) {
                Some((path, kind)) => state.nodes.push(SavedNode {
                    id,
                    path,
                    kind,
                    lookups: node.lookups,
                }),
                None if open_nodes.contains(&id) => {
                    let path = self
                        .inner
                        .readlinkat_proc_file(node.inner)
                        .unwrap_or_default();
                    return Err(StateError::Unnamed { path });
                }
                None => {
                    log::warn!("fs: node {id} has no path any more; the restored guest loses it")
                }
            }
        }
        for (fh, open) in table.handles() {
            state.handles.push(SavedHandle {
                fh,
                node: open.node,
                flags: open.flags,
                dir: open.dir,
            });
        }
        state.nodes.sort_by(|a, b| a.path.cmp(&b.path));
        state.handles.sort_by_key(|h| h.fh);
        Ok(state)
    }

    /// The path under `root` of the passthrough's `inode` and its file
    /// type, when that path still names it.
    fn path_of(&self, root: &Path, inode: Inode) -> Option<(Vec<u8>, u32)> {
        let path = self.inner.readlinkat_proc_file(inode).ok()?;
        let (st, _) = self.inner.getattr(&Context::default(), inode, None).ok()?;
        let meta = std::fs::symlink_metadata(&path).ok()?;
        // An unlinked file's link reads "PATH (deleted)": no file of that
        // name, or another one.
        if meta.ino() != st.st_ino || meta.dev() != st.st_dev {
            return None;
        }
        let rel = path.strip_prefix(root).ok()?;
        Some((
            rel.as_os_str().as_bytes().to_vec(),
            st.st_mode & libc::S_IFMT,
        ))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The passthrough's inode of the guest's `node`.
    fn node(&self, node: Inode) -> io::Result<Inode> {
        if !self.remapped {
            return Ok(node);
        }
        self.table().inner_node(node).ok_or_else(ebadf)
    }

    /// The passthrough's handle of the guest's `handle`.
    fn handle(&self, handle: Handle) -> io::Result<Handle> {
        if !self.remapped {
            return Ok(handle);
        }
        self.table().inner_handle(handle).ok_or_else(ebadf)
    }

    fn opt_handle(&self, handle: Option<Handle>) -> io::Result<Option<Handle>> {
        handle.map(|h| self.handle(h)).transpose()
    }

    /// An entry of the passthrough as the guest gets it: its id, its
    /// attributes in container ids; one more lookup held.
    fn given(&self, mut e: Entry) -> Entry {
        e.inode = self.table().looked_up(e.inode);
        self.entry(e)
    }

    /// A handle the passthrough opened on the guest's `node`, as the
    /// guest gets it.
    fn opened(&self, node: Inode, handle: Option<Handle>, flags: u32, dir: bool) -> Option<Handle> {
        handle.map(|h| self.table().opened(node, h, flags, dir))
    }

    /// The request's caller with host ids: the owner of what it creates.
    fn host_ctx(&self, ctx: &Context) -> io::Result<Context> {
        match (self.ids.uid.to_host(ctx.uid), self.ids.gid.to_host(ctx.gid)) {
            (Some(uid), Some(gid)) => Ok(Context { uid, gid, ..*ctx }),
            _ => Err(io::Error::from_raw_os_error(libc::EOVERFLOW)),
        }
    }

    /// Attributes as the container sees them.
    fn attr(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.ids.uid.to_container(st.st_uid);
        st.st_gid = self.ids.gid.to_container(st.st_gid);
        st
    }

    fn entry(&self, mut e: Entry) -> Entry {
        e.attr = self.attr(e.attr);
        e
    }

    /// With a mapping, a file whose host owner or group is outside it is
    /// not the container's: its permission bits decide for the caller's
    /// host ids, as the kernel decides for root in a user namespace (no
    /// DAC override over an inode whose ids it does not map). The guest
    /// kernel cannot check this (it sees `nobody`, and its root may read
    /// anything), and the VMM opens files as the host's root.
    fn not_theirs_check(&self, ctx: &Context, inode: Inode, want: u32) -> io::Result<()> {
        if self.ids.uid.is_identity() && self.ids.gid.is_identity() {
            return Ok(());
        }
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if self.ids.uid.maps_host(st.st_uid) && self.ids.gid.maps_host(st.st_gid) {
            return Ok(());
        }
        let mode = st.st_mode;
        let bits = match self.host_ctx(ctx) {
            Ok(c) if c.uid == st.st_uid => (mode >> 6) & 7,
            Ok(c) if c.gid == st.st_gid => (mode >> 3) & 7,
            _ => mode & 7,
        };
        if bits & want == want {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

type Inode = u64;
type Handle = u64;

/// What a checkpoint keeps of a share: the options of the guest's
/// `FUSE_INIT`, each node the guest holds by its path under the share, and
/// each file it holds open ([`super::nodes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareState {
    pub init: Option<u64>,
    pub nodes: Vec<SavedNode>,
    pub handles: Vec<SavedHandle>,
}

/// A node the guest holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    /// The guest's node id.
    pub id: u64,
    /// Its path under the share's root (bytes: a name need not be UTF-8).
    pub path: Vec<u8>,
    /// Its file type (`st_mode & S_IFMT`).
    pub kind: u32,
    /// The lookups the guest holds.
    pub lookups: u64,
}

/// A file or directory the guest holds open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHandle {
    pub fh: u64,
    pub node: u64,
    pub flags: u32,
    pub dir: bool,
}

/// Why a share's state could not be written down or put back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("finding the path of the share's root: {0}")]
    Root(io::Error),
    #[error(
        "the guest holds {path} open, but it was deleted or moved on the host: a checkpoint \
         cannot keep a file that no path names (close it, or keep it under a path, before \
         checkpointing)"
    )]
    Unnamed { path: PathBuf },
    #[error("the checkpoint's file {path} is not in the share any more: {source}")]
    Missing { path: PathBuf, source: io::Error },
    #[error("the checkpoint's file {path} is a different kind of file now")]
    Changed { path: PathBuf },
    #[error("reopening the checkpoint's open file {path}: {source}")]
    Reopen { path: PathBuf, source: io::Error },
    #[error("the checkpoint holds handle {fh} of node {node}, which it does not list")]
    Dangling { fh: u64, node: u64 },
}

/// `open(2)` flags that made a file, not ones to open it again with.
const CREATING_FLAGS: u32 = (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32;

impl FileSystem for Share {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.table().init = Some(capable.bits());
        // Requests of up to 1 MiB (`max_pages`), not one page at a time:
        // the passthrough serves any size the server accepts, and the
        // server bounds what a guest may send (`MAX_BUFFER_SIZE`).
        Ok(self.inner.init(capable)? | LARGE_REQUESTS)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let parent = self.node(parent)?;
        self.inner.lookup(ctx, parent, name).map(|e| self.given(e))
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        let forwarded = self.table().forget(inode, count);
        if let Some((inner, count)) = forwarded {
            self.inner.forget(ctx, inner, count)
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        let forwarded = {
            let mut table = self.table();
            requests
                .into_iter()
                .filter_map(|(inode, count)| table.forget(inode, count))
                .collect::<Vec<_>>()
        };
        self.inner.batch_forget(ctx, forwarded)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let (inode, handle) = (self.node(inode)?, self.opt_handle(handle)?);
        let (st, timeout) = self.inner.getattr(ctx, inode, handle)?;
        Ok((self.attr(st), timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let (inode, handle) = (self.node(inode)?, self.opt_handle(handle)?);
        let mut attr = attr;
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        if valid.contains(SetattrValid::UID) {
            attr.st_uid = self.ids.uid.to_host(attr.st_uid).ok_or_else(einval)?;
        }
        if valid.contains(SetattrValid::GID) {
            attr.st_gid = self.ids.gid.to_host(attr.st_gid).ok_or_else(einval)?;
        }
        let (st, timeout) = self.inner.setattr(ctx, inode, attr, handle, valid)?;
        Ok((self.attr(st), timeout))
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, self.node(inode)?)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let ctx = self.host_ctx(ctx)?;
        let parent = self.node(parent)?;
        self.inner
            .symlink(&ctx, linkname, parent, name)
            .map(|e| self.given(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let ctx = self.host_ctx(ctx)?;
        let inode = self.node(inode)?;
        self.inner
            .mknod(&ctx, inode, name, mode, rdev, umask)
            .map(|e| self.given(e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let ctx = self.host_ctx(ctx)?;
        let parent = self.node(parent)?;
        self.inner
            .mkdir(&ctx, parent, name, mode, umask)
            .map(|e| self.given(e))
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, self.node(parent)?, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, self.node(parent)?, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        let (olddir, newdir) = (self.node(olddir)?, self.node(newdir)?);
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let (inode, newparent) = (self.node(inode)?, self.node(newparent)?);
        self.inner
            .link(ctx, inode, newparent, newname)
            .map(|e| self.given(e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        if flags & WRITE_FLAGS != 0 {
            self.writable()?;
        }
        let guest = inode;
        let inode = self.node(inode)?;
        self.not_theirs_check(ctx, inode, access_wanted(flags))?;
        let (handle, options, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
        Ok((
            self.opened(guest, handle, flags, false),
            options,
            passthrough,
        ))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        let ctx = self.host_ctx(ctx)?;
        let parent = self.node(parent)?;
        let (entry, handle, options, passthrough) = self.inner.create(&ctx, parent, name, args)?;
        let entry = self.given(entry);
        let handle = self.opened(entry.inode, handle, args.flags, false);
        Ok((entry, handle, options, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let inode = self.node(inode)?;
        let handle = self.table().released(handle).ok_or_else(ebadf)?;
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, self.node(inode)?)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .setxattr(ctx, self.node(inode)?, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, self.node(inode)?, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, self.node(inode)?, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, self.node(inode)?, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let guest = inode;
        let inode = self.node(inode)?;
        self.not_theirs_check(ctx, inode, READ)?;
        let (handle, options) = self.inner.opendir(ctx, inode, flags)?;
        Ok((self.opened(guest, handle, flags, true), options))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                add_entry(d, self.given(e))
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        let inode = self.node(inode)?;
        let handle = self.table().released(handle).ok_or_else(ebadf)?;
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if mask & u32::try_from(libc::W_OK).unwrap_or(0) != 0 {
            self.writable()?;
        }
        // Checked against the host's owner: with the caller's host ids.
        let ctx = self
            .host_ctx(ctx)
            .map_err(|_| io::Error::from_raw_os_error(libc::EACCES))?;
        self.inner.access(&ctx, self.node(inode)?, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn setlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn setlkw(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let (inode, handle) = (self.node(inode)?, self.handle(handle)?);
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }
}
