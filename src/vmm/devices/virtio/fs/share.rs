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

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;

use super::idmap::IdMaps;

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
}

impl Share {
    pub fn new(inner: PassthroughFs, read_only: bool, ids: IdMaps) -> Share {
        Share {
            inner,
            read_only,
            ids,
        }
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

impl FileSystem for Share {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Requests of up to 1 MiB (`max_pages`), not one page at a time:
        // the passthrough serves any size the server accepts, and the
        // server bounds what a guest may send (`MAX_BUFFER_SIZE`).
        Ok(self.inner.init(capable)? | LARGE_REQUESTS)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name).map(|e| self.entry(e))
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
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
        self.inner.readlink(ctx, inode)
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
        self.inner
            .symlink(&ctx, linkname, parent, name)
            .map(|e| self.entry(e))
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
        self.inner
            .mknod(&ctx, inode, name, mode, rdev, umask)
            .map(|e| self.entry(e))
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
        self.inner
            .mkdir(&ctx, parent, name, mode, umask)
            .map(|e| self.entry(e))
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
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
        self.inner
            .link(ctx, inode, newparent, newname)
            .map(|e| self.entry(e))
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
        self.not_theirs_check(ctx, inode, access_wanted(flags))?;
        self.inner.open(ctx, inode, flags, fuse_flags)
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
        let (entry, handle, options, passthrough) = self.inner.create(&ctx, parent, name, args)?;
        Ok((self.entry(entry), handle, options, passthrough))
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
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
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
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
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
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.not_theirs_check(ctx, inode, READ)?;
        self.inner.opendir(ctx, inode, flags)
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
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                add_entry(d, self.entry(e))
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
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
        self.inner.access(&ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
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
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }
}
