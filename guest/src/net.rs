//! The guest's network, configured from the [`NetSetup`] the host sends.
//!
//! [`configure_with`] does the work, in this order:
//!
//! 1. check the whole setup (names, prefixes, routes) before touching anything;
//! 2. bring `lo` up (always; Linux gives it 127.0.0.1/8 and ::1 on the way);
//! 3. find each NIC's interface by its MAC (virtio-net devices come up as
//!    `eth0`, `eth1`, ... in probe order, which need not be the wanted order)
//!    and rename the ones whose name differs, through a temporary name where
//!    two want each other's names (renaming needs the interface down, which
//!    it still is). A NIC with a `probed_mac` (a VM restored from a template
//!    VM, whose guest probed its NICs with placeholder MACs) is found by
//!    that one first and given its own; then `arp_notify` (IPv4) and
//!    `ndisc_notify` (IPv6) are turned on, so each interface announces its
//!    addresses when it comes up;
//! 4. per NIC, in the given order: MTU; for IPv6 addresses `disable_ipv6=0`
//!    (where present) and `accept_dad=0`, so the addresses are usable at once
//!    instead of tentative; the addresses; then up;
//! 5. the routes, in the given order, once every NIC is up (the kernel checks
//!    a gateway against the interfaces that are up).
//!
//! A NIC's first IPv4 address goes on the interface itself; each further one
//! on an alias label (`eth0:1`, `eth0:2`, ...), the only way the address
//! ioctls can hold more than one. IPv6 addresses need no labels.
//!
//! Every side effect goes through [`NetOps`]; [`RealNetOps`] implements it with
//! plain socket ioctls (no netlink) and `/proc/sys/net/ipv{4,6}/conf`.

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libc::{c_char, c_int, c_short, c_ulong};
use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::agent_proto::{GuestNic, GuestRoute, NetSetup};

/// The loopback interface, brought up whatever the setup says.
pub const LOOPBACK: &str = "lo";

/// Longest interface name (or alias label), in bytes: `IFNAMSIZ` less the NUL.
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Largest IPv4 route metric the route ioctl carries: `rtentry.rt_metric` is a
/// `short` holding the metric plus one (the kernel subtracts one,
/// `rtentry_to_fib_config` in `net/ipv4/fib_frontend.c`).
pub const MAX_IPV4_ROUTE_METRIC: u32 = 32766;

/// Length of an Ethernet address.
pub const MAC_LEN: usize = 6;

/// Prefix of the temporary names used to swap interface names.
const TEMP_NAME_PREFIX: &str = "husk-tmp";

const IPV4_BITS: u8 = 32;
const IPV6_BITS: u8 = 128;

/// One network interface as the guest kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Its Ethernet address (`aa:bb:cc:dd:ee:ff`); `None` for non-Ethernet
    /// interfaces such as `lo`.
    pub mac: Option<String>,
}

/// The network side effects [`configure_with`] needs.
pub trait NetOps {
    /// Every network interface, with its MAC.
    fn interfaces(&mut self) -> Result<Vec<Interface>, Errno>;
    /// Renames a (down) interface.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Errno>;
    /// Sets a (down) Ethernet interface's MAC.
    fn set_mac(&mut self, ifname: &str, mac: [u8; MAC_LEN]) -> Result<(), Errno>;
    /// Writes `/proc/sys/net/ipv4/conf/<ifname>/<key>` (`all` for every
    /// interface).
    fn set_ipv4_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno>;
    fn set_mtu(&mut self, ifname: &str, mtu: u32) -> Result<(), Errno>;
    /// Writes `/proc/sys/net/ipv6/conf/<ifname>/<key>`; `ENOENT` when the
    /// kernel has no such setting (no IPv6).
    fn set_ipv6_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno>;
    /// Adds an IPv4 address to the interface or alias `label` (`eth0`, `eth0:1`).
    fn add_ipv4(&mut self, label: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno>;
    fn add_ipv6(&mut self, ifname: &str, addr: Ipv6Addr, prefix_len: u8) -> Result<(), Errno>;
    /// Sets `IFF_UP`.
    fn set_up(&mut self, ifname: &str) -> Result<(), Errno>;
    /// Adds an IPv4 route; `metric` 0 is none.
    fn add_route_v4(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        dev: &str,
        metric: u32,
    ) -> Result<(), Errno>;
    /// Adds an IPv6 route; `metric` 0 lets the kernel choose (1024).
    fn add_route_v6(
        &mut self,
        dst: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
        dev: &str,
        metric: u32,
    ) -> Result<(), Errno>;
}

/// Why the guest network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface name {name:?} (MAC {mac}): {reason}")]
    BadName {
        name: String,
        mac: String,
        reason: &'static str,
    },
    #[error("two guest NICs are both named {name}")]
    DuplicateName { name: String },
    #[error("two guest NICs both have MAC {mac}")]
    DuplicateMac { mac: String },
    #[error("MAC {mac:?} of the NIC to be named {name} is not six colon-separated hex bytes")]
    BadMac { mac: String, name: String },
    #[error("two guest NICs were both probed with MAC {mac}")]
    DuplicateProbedMac { mac: String },
    #[error("setting MAC {mac} on {ifname} (probed as {probed}): {}", .errno.desc())]
    SetMac {
        ifname: String,
        mac: String,
        probed: String,
        errno: Errno,
    },
    #[error("setting net.ipv4.conf.{ifname}.{key}={value}: {}", .errno.desc())]
    Ipv4Conf {
        ifname: String,
        key: &'static str,
        value: &'static str,
        errno: Errno,
    },
    #[error(
        "address {addr}/{prefix_len} on {ifname}: prefix length too long for the address family"
    )]
    BadAddress {
        ifname: String,
        addr: IpAddr,
        prefix_len: u8,
    },
    #[error(
        "address {addr}/{prefix_len} on {ifname}: a further IPv4 address needs the alias label \
         {label}, longer than {MAX_IFNAME_LEN} bytes"
    )]
    AliasLabelTooLong {
        ifname: String,
        addr: IpAddr,
        prefix_len: u8,
        label: String,
    },
    #[error("route {dst}/{prefix_len}: device {dev} is not one of the guest NICs")]
    RouteUnknownDev {
        dst: IpAddr,
        prefix_len: u8,
        dev: String,
    },
    #[error("route {dst}/{prefix_len} dev {dev}: prefix length too long for the address family")]
    RoutePrefixTooLong {
        dst: IpAddr,
        prefix_len: u8,
        dev: String,
    },
    #[error("route {dst}/{prefix_len} dev {dev}: gateway {gateway} is of another address family")]
    RouteFamilyMismatch {
        dst: IpAddr,
        prefix_len: u8,
        dev: String,
        gateway: IpAddr,
    },
    #[error("route {dst}/{prefix_len} dev {dev}: the destination has bits set beyond the prefix")]
    RouteHostBits {
        dst: IpAddr,
        prefix_len: u8,
        dev: String,
    },
    #[error(
        "route {dst}/{prefix_len} dev {dev}: metric {metric} is over {MAX_IPV4_ROUTE_METRIC}, \
         the most the IPv4 route ioctl carries"
    )]
    RouteMetricTooLarge {
        dst: IpAddr,
        prefix_len: u8,
        dev: String,
        metric: u32,
    },
    #[error("listing network interfaces: {}", .errno.desc())]
    ListInterfaces { errno: Errno },
    #[error("no network interface has MAC {mac} (the NIC to be named {name})")]
    NoInterfaceWithMac { mac: String, name: String },
    #[error("MAC {mac} (the NIC to be named {name}) is on several interfaces: {}", .found.join(", "))]
    AmbiguousMac {
        mac: String,
        name: String,
        found: Vec<String>,
    },
    #[error("cannot name the NIC with MAC {mac} {name}: an interface not in the network setup has that name")]
    NameTaken { name: String, mac: String },
    #[error("renaming network interface {from} to {to}: {}", .errno.desc())]
    Rename {
        from: String,
        to: String,
        errno: Errno,
    },
    #[error("setting MTU {mtu} on {ifname}: {}", .errno.desc())]
    SetMtu {
        ifname: String,
        mtu: u32,
        errno: Errno,
    },
    #[error("IPv6 address on {ifname}, but the guest kernel has no IPv6 (no /proc/sys/net/ipv6/conf/{ifname})")]
    NoIpv6 { ifname: String },
    #[error("setting net.ipv6.conf.{ifname}.{key}={value}: {}", .errno.desc())]
    Ipv6Conf {
        ifname: String,
        key: &'static str,
        value: &'static str,
        errno: Errno,
    },
    #[error("adding address {addr}/{prefix_len} to {ifname}: {}", .errno.desc())]
    AddAddress {
        ifname: String,
        addr: IpAddr,
        prefix_len: u8,
        errno: Errno,
    },
    #[error("bringing {ifname} up: {}", .errno.desc())]
    SetUp { ifname: String, errno: Errno },
    #[error("adding route {dst}/{prefix_len}{} dev {dev}: {}", via(.gateway), .errno.desc())]
    AddRoute {
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        dev: String,
        errno: Errno,
    },
}

/// `" via GATEWAY"`, or nothing for an on-link route.
fn via(gateway: &Option<IpAddr>) -> String {
    gateway.map(|gw| format!(" via {gw}")).unwrap_or_default()
}

/// Configures the guest network with the real kernel interfaces.
pub fn configure(setup: &NetSetup) -> Result<(), NetError> {
    configure_with(&mut RealNetOps::new(), setup)
}

/// Configures the guest network through `ops`, in the order in the module
/// documentation. Stops at the first error.
pub fn configure_with(ops: &mut impl NetOps, setup: &NetSetup) -> Result<(), NetError> {
    validate(setup)?;
    ops.set_up(LOOPBACK).map_err(|errno| NetError::SetUp {
        ifname: LOOPBACK.to_owned(),
        errno,
    })?;
    if setup.nics.is_empty() {
        // `validate` made sure no route names a device.
        return Ok(());
    }
    let mut found = ops
        .interfaces()
        .map_err(|errno| NetError::ListInterfaces { errno })?;
    readdress_nics(ops, &setup.nics, &mut found)?;
    let current = find_nics(&setup.nics, &found)?;
    announce(ops, &setup.nics)?;
    rename_nics(ops, &setup.nics, current, &found)?;
    for nic in &setup.nics {
        configure_nic(ops, nic)?;
    }
    for route in &setup.routes {
        add_route(ops, route)?;
    }
    Ok(())
}

/// Checks everything that can be checked without the kernel.
fn validate(setup: &NetSetup) -> Result<(), NetError> {
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    let mut probed_macs = HashSet::new();
    for nic in &setup.nics {
        check_name(nic)?;
        if !names.insert(nic.name.as_str()) {
            return Err(NetError::DuplicateName {
                name: nic.name.clone(),
            });
        }
        if !macs.insert(nic.mac.to_ascii_lowercase()) {
            return Err(NetError::DuplicateMac {
                mac: nic.mac.clone(),
            });
        }
        if let Some(probed) = &nic.probed_mac {
            parse_mac(&nic.mac, &nic.name)?;
            parse_mac(probed, &nic.name)?;
            if !probed_macs.insert(probed.to_ascii_lowercase()) {
                return Err(NetError::DuplicateProbedMac {
                    mac: probed.clone(),
                });
            }
        }
        for (addr, prefix_len) in nic.addrs.iter().map(|p| (p.addr, p.prefix_len)) {
            if prefix_len > max_prefix(addr) {
                return Err(NetError::BadAddress {
                    ifname: nic.name.clone(),
                    addr,
                    prefix_len,
                });
            }
        }
        for (index, addr) in ipv4_addrs(nic).enumerate() {
            let label = ipv4_label(&nic.name, index);
            if label.len() > MAX_IFNAME_LEN {
                return Err(NetError::AliasLabelTooLong {
                    ifname: nic.name.clone(),
                    addr: IpAddr::V4(addr.0),
                    prefix_len: addr.1,
                    label,
                });
            }
        }
    }
    for route in &setup.routes {
        check_route(route, &names)?;
    }
    Ok(())
}

fn check_name(nic: &GuestNic) -> Result<(), NetError> {
    let reason = if nic.name.is_empty() {
        Some("empty")
    } else if nic.name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if nic.name == "." || nic.name == ".." {
        Some("not a valid name")
    } else if nic
        .name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or white space")
    } else if nic.name.starts_with(TEMP_NAME_PREFIX) {
        Some("reserved for temporary names")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::BadName {
            name: nic.name.clone(),
            mac: nic.mac.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_route(route: &GuestRoute, nic_names: &HashSet<&str>) -> Result<(), NetError> {
    let dst = route.dst.addr;
    let prefix_len = route.dst.prefix_len;
    let dev = || route.dev.clone();
    if !nic_names.contains(route.dev.as_str()) {
        return Err(NetError::RouteUnknownDev {
            dst,
            prefix_len,
            dev: dev(),
        });
    }
    if prefix_len > max_prefix(dst) {
        return Err(NetError::RoutePrefixTooLong {
            dst,
            prefix_len,
            dev: dev(),
        });
    }
    if let Some(gateway) = route.gateway {
        if gateway.is_ipv4() != dst.is_ipv4() {
            return Err(NetError::RouteFamilyMismatch {
                dst,
                prefix_len,
                dev: dev(),
                gateway,
            });
        }
    }
    if let IpAddr::V4(dst4) = dst {
        // The kernel refuses such a destination with a bare EINVAL.
        if u32::from(dst4) & !u32::from(netmask_v4(prefix_len)) != 0 {
            return Err(NetError::RouteHostBits {
                dst,
                prefix_len,
                dev: dev(),
            });
        }
        if route.metric > MAX_IPV4_ROUTE_METRIC {
            return Err(NetError::RouteMetricTooLarge {
                dst,
                prefix_len,
                dev: dev(),
                metric: route.metric,
            });
        }
    }
    Ok(())
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => IPV4_BITS,
        IpAddr::V6(_) => IPV6_BITS,
    }
}

/// The IPv4 network mask of a prefix length (at most 32).
fn netmask_v4(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::from(prefix_len.min(IPV4_BITS));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
}

fn ipv4_addrs(nic: &GuestNic) -> impl Iterator<Item = (Ipv4Addr, u8)> + '_ {
    nic.addrs.iter().filter_map(|p| match p.addr {
        IpAddr::V4(addr) => Some((addr, p.prefix_len)),
        IpAddr::V6(_) => None,
    })
}

/// Where the `index`th IPv4 address of an interface goes: the interface
/// itself for the first, alias labels `name:1`, `name:2`, ... after.
fn ipv4_label(name: &str, index: usize) -> String {
    if index == 0 {
        name.to_owned()
    } else {
        format!("{name}:{index}")
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case) as bytes; `name` is the NIC's, for
/// the error.
fn parse_mac(text: &str, name: &str) -> Result<[u8; MAC_LEN], NetError> {
    let bad = || NetError::BadMac {
        mac: text.to_owned(),
        name: name.to_owned(),
    };
    let mut mac = [0u8; MAC_LEN];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // `from_str_radix` alone would take "+1".
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Gives each NIC that was probed with another MAC (a VM restored from a
/// template VM) its own, and updates `found` to match. Every interface is
/// looked up by its probed MAC before any is changed, so a NIC's new MAC
/// may be another's probed one.
fn readdress_nics(
    ops: &mut impl NetOps,
    nics: &[GuestNic],
    found: &mut [Interface],
) -> Result<(), NetError> {
    let mut changes = Vec::new();
    for nic in nics {
        let Some(probed) = &nic.probed_mac else {
            continue;
        };
        let index = interface_index(probed, &nic.name, found)?;
        changes.push((index, nic, probed));
    }
    for (index, nic, probed) in changes {
        // `validate` checked both MACs.
        let mac = parse_mac(&nic.mac, &nic.name)?;
        let interface = &mut found[index];
        ops.set_mac(&interface.name, mac)
            .map_err(|errno| NetError::SetMac {
                ifname: interface.name.clone(),
                mac: nic.mac.clone(),
                probed: probed.clone(),
                errno,
            })?;
        interface.mac = Some(nic.mac.to_ascii_lowercase());
    }
    Ok(())
}

/// Has the kernel announce each address when its interface comes up
/// (a gratuitous ARP, an unsolicited neighbour advertisement), so the
/// bridge and the neighbours learn the NIC's MAC at once, even where they
/// knew the address on another MAC (a container before this one).
fn announce(ops: &mut impl NetOps, nics: &[GuestNic]) -> Result<(), NetError> {
    let addrs = || nics.iter().flat_map(|n| &n.addrs);
    if addrs().any(|p| p.addr.is_ipv4()) {
        ops.set_ipv4_conf("all", "arp_notify", "1")
            .map_err(|errno| NetError::Ipv4Conf {
                ifname: "all".into(),
                key: "arp_notify",
                value: "1",
                errno,
            })?;
    }
    if addrs().any(|p| p.addr.is_ipv6()) {
        match ops.set_ipv6_conf("all", "ndisc_notify", "1") {
            // No IPv6 in the guest kernel: `prepare_ipv6` says so.
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(NetError::Ipv6Conf {
                    ifname: "all".into(),
                    key: "ndisc_notify",
                    value: "1",
                    errno,
                })
            }
        }
    }
    Ok(())
}

/// The index in `found` of the one interface with MAC `mac`; `name` is the
/// NIC's wanted name, for the error.
fn interface_index(mac: &str, name: &str, found: &[Interface]) -> Result<usize, NetError> {
    let matching: Vec<usize> = found
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.mac
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(mac))
        })
        .map(|(index, _)| index)
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(NetError::NoInterfaceWithMac {
            mac: mac.to_owned(),
            name: name.to_owned(),
        }),
        _ => Err(NetError::AmbiguousMac {
            mac: mac.to_owned(),
            name: name.to_owned(),
            found: matching.iter().map(|&i| found[i].name.clone()).collect(),
        }),
    }
}

/// The current name of each NIC's interface, in the order of `nics`.
fn find_nics(nics: &[GuestNic], found: &[Interface]) -> Result<Vec<String>, NetError> {
    nics.iter()
        .map(|nic| {
            Ok(found[interface_index(&nic.mac, &nic.name, found)?]
                .name
                .clone())
        })
        .collect()
}

/// Gives every NIC its wanted name. Renames go straight to the wanted name
/// when it is free; when each remaining wanted name is held by another NIC
/// still to be renamed (a swap, or a longer cycle), one of them moves to a
/// temporary name first, which frees the name another one wants.
fn rename_nics(
    ops: &mut impl NetOps,
    nics: &[GuestNic],
    current: Vec<String>,
    found: &[Interface],
) -> Result<(), NetError> {
    let mut pending: Vec<(String, &GuestNic)> = current
        .into_iter()
        .zip(nics)
        .filter(|(now, nic)| *now != nic.name)
        .collect();
    // A wanted name held by an interface that is not being renamed away
    // cannot be freed. (A NIC that keeps its name cannot hold another NIC's
    // wanted name: the names are distinct.)
    for (_, nic) in &pending {
        let held = found.iter().any(|i| i.name == nic.name);
        let moving = pending.iter().any(|(now, _)| *now == nic.name);
        if held && !moving {
            return Err(NetError::NameTaken {
                name: nic.name.clone(),
                mac: nic.mac.clone(),
            });
        }
    }
    let mut taken: HashSet<String> = found.iter().map(|i| i.name.clone()).collect();
    while !pending.is_empty() {
        if let Some(free) = pending
            .iter()
            .position(|(_, nic)| !taken.contains(&nic.name))
        {
            let (from, nic) = pending.swap_remove(free);
            rename_one(ops, &mut taken, &from, &nic.name)?;
        } else {
            let temp = temp_name(&taken);
            let from = std::mem::replace(&mut pending[0].0, temp.clone());
            rename_one(ops, &mut taken, &from, &temp)?;
        }
    }
    Ok(())
}

fn rename_one(
    ops: &mut impl NetOps,
    taken: &mut HashSet<String>,
    from: &str,
    to: &str,
) -> Result<(), NetError> {
    ops.rename(from, to).map_err(|errno| NetError::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        errno,
    })?;
    taken.remove(from);
    taken.insert(to.to_owned());
    Ok(())
}

/// A name no interface has (`husk-tmp0`, `husk-tmp1`, ...).
fn temp_name(taken: &HashSet<String>) -> String {
    (0..)
        .map(|n| format!("{TEMP_NAME_PREFIX}{n}"))
        .find(|name| !taken.contains(name))
        .unwrap_or_default()
}

/// MTU, IPv6 settings, addresses, up: one NIC, already renamed.
fn configure_nic(ops: &mut impl NetOps, nic: &GuestNic) -> Result<(), NetError> {
    let name = nic.name.as_str();
    if nic.mtu != 0 {
        ops.set_mtu(name, nic.mtu)
            .map_err(|errno| NetError::SetMtu {
                ifname: name.to_owned(),
                mtu: nic.mtu,
                errno,
            })?;
    }
    if nic.addrs.iter().any(|p| p.addr.is_ipv6()) {
        prepare_ipv6(ops, name)?;
    }
    let mut ipv4_index = 0;
    for prefix in &nic.addrs {
        let (label, result) = match prefix.addr {
            IpAddr::V4(addr) => {
                let label = ipv4_label(name, ipv4_index);
                ipv4_index += 1;
                let result = ops.add_ipv4(&label, addr, prefix.prefix_len);
                (label, result)
            }
            IpAddr::V6(addr) => (name.to_owned(), ops.add_ipv6(name, addr, prefix.prefix_len)),
        };
        result.map_err(|errno| NetError::AddAddress {
            ifname: label,
            addr: prefix.addr,
            prefix_len: prefix.prefix_len,
            errno,
        })?;
    }
    ops.set_up(name).map_err(|errno| NetError::SetUp {
        ifname: name.to_owned(),
        errno,
    })
}

/// Turns IPv6 on (where it can be turned off) and duplicate address
/// detection off, so addresses set by ioctl are usable at once rather than
/// tentative.
fn prepare_ipv6(ops: &mut impl NetOps, name: &str) -> Result<(), NetError> {
    let conf_error = |key, value, errno| NetError::Ipv6Conf {
        ifname: name.to_owned(),
        key,
        value,
        errno,
    };
    match ops.set_ipv6_conf(name, "disable_ipv6", "0") {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(conf_error("disable_ipv6", "0", errno)),
    }
    match ops.set_ipv6_conf(name, "accept_dad", "0") {
        Ok(()) => Ok(()),
        Err(Errno::ENOENT) => Err(NetError::NoIpv6 {
            ifname: name.to_owned(),
        }),
        Err(errno) => Err(conf_error("accept_dad", "0", errno)),
    }
}

fn add_route(ops: &mut impl NetOps, route: &GuestRoute) -> Result<(), NetError> {
    let prefix_len = route.dst.prefix_len;
    let dev = route.dev.as_str();
    // `validate` checked that the families match.
    let result = match (route.dst.addr, route.gateway) {
        (IpAddr::V4(dst), None) => ops.add_route_v4(dst, prefix_len, None, dev, route.metric),
        (IpAddr::V4(dst), Some(IpAddr::V4(gw))) => {
            ops.add_route_v4(dst, prefix_len, Some(gw), dev, route.metric)
        }
        (IpAddr::V6(dst), None) => ops.add_route_v6(dst, prefix_len, None, dev, route.metric),
        (IpAddr::V6(dst), Some(IpAddr::V6(gw))) => {
            ops.add_route_v6(dst, prefix_len, Some(gw), dev, route.metric)
        }
        (_, Some(_)) => Err(Errno::EAFNOSUPPORT),
    };
    result.map_err(|errno| NetError::AddRoute {
        dst: route.dst.addr,
        prefix_len,
        gateway: route.gateway,
        dev: dev.to_owned(),
        errno,
    })
}

/// `struct in6_rtmsg` of `linux/ipv6_route.h` (libc's has private fields).
#[repr(C)]
struct In6Rtmsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: c_int,
}

const _: () = assert!(std::mem::size_of::<In6Rtmsg>() == std::mem::size_of::<libc::in6_rtmsg>());

/// [`NetOps`] on the running kernel: ioctls on an `AF_INET` socket (and an
/// `AF_INET6` one for IPv6 addresses and routes, opened when first needed, so
/// an IPv4-only guest kernel works), `if_nameindex` and `SIOCGIFHWADDR` for the
/// interface list (netlink under the hood: no /sys needed, and it follows the
/// calling thread's network namespace), `/proc/sys` for the IPv6 settings.
#[derive(Debug, Default)]
pub struct RealNetOps {
    inet: Option<OwnedFd>,
    inet6: Option<OwnedFd>,
}

impl RealNetOps {
    pub fn new() -> Self {
        Self::default()
    }

    fn inet(&mut self) -> Result<BorrowedFd<'_>, Errno> {
        open_socket(&mut self.inet, AddressFamily::Inet)
    }

    fn inet6(&mut self) -> Result<BorrowedFd<'_>, Errno> {
        open_socket(&mut self.inet6, AddressFamily::Inet6)
    }

    fn ifindex(&mut self, ifname: &str) -> Result<c_int, Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(ifname)?;
        // SAFETY: SIOCGIFINDEX reads and writes a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCGIFINDEX, &mut ifr) }?;
        // SAFETY: the kernel filled `ifru_ifindex`; any int is a valid value.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
    }
}

fn open_socket(slot: &mut Option<OwnedFd>, family: AddressFamily) -> Result<BorrowedFd<'_>, Errno> {
    if slot.is_none() {
        *slot = Some(socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?);
    }
    slot.as_ref().map(AsFd::as_fd).ok_or(Errno::EBADF)
}

/// Writes `value` to the sysctl file `path`.
fn write_sysctl(path: &str, value: &str) -> Result<(), Errno> {
    let os_errno = crate::agent::spawn::errno_of;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(os_errno)?;
    file.write_all(value.as_bytes()).map_err(os_errno)
}

/// Runs one ioctl whose argument is a pointer to `arg`.
///
/// # Safety
/// `T` must be the structure the kernel reads (and writes back) for `request`.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: c_ulong, arg: &mut T) -> Result<(), Errno> {
    // The SIOC* numbers are below 0x9000: they fit musl's `int` request type.
    let request = libc::Ioctl::try_from(request).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `fd` is an open socket, `arg` a live and writable `T`, which is
    // what `request` expects per this function's contract.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    Errno::result(rc).map(drop)
}

/// An interface name as the kernel wants it: NUL-padded to `IFNAMSIZ`.
fn ifname_buf(name: &str) -> Result<[c_char; libc::IFNAMSIZ], Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_IFNAME_LEN || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    let mut buf = [0; libc::IFNAMSIZ];
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = c_char::from_ne_bytes([*src]);
    }
    Ok(buf)
}

/// A zeroed `struct ifreq` naming `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: `ifreq` holds a char array and a union of integers, sockaddrs,
    // char arrays and a raw pointer: all zeroes is a valid value of each.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name = ifname_buf(name)?;
    Ok(ifr)
}

/// A `struct sockaddr_in` (port 0) in a `struct sockaddr`, the way the
/// interface and route ioctls take IPv4 addresses: family, then the port and
/// the address in network order in `sa_data`.
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0; 14];
    for (dst, src) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = c_char::from_ne_bytes([src]);
    }
    libc::sockaddr {
        sa_family: AF_INET_FAMILY,
        sa_data,
    }
}

const AF_INET_FAMILY: libc::sa_family_t = {
    assert!(libc::AF_INET >= 0 && libc::AF_INET <= 0xffff);
    libc::AF_INET as libc::sa_family_t
};

fn in6_addr(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

fn format_mac(bytes: &[c_char]) -> String {
    bytes
        .iter()
        .map(|b| format!("{:02x}", b.to_ne_bytes()[0]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The names of all interfaces, from `if_nameindex(3)`.
fn interface_names() -> Result<Vec<String>, Errno> {
    // SAFETY: no preconditions; returns null (errno set) or an array that
    // ends with a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(Errno::last());
    }
    let mut names = Vec::new();
    for i in 0.. {
        // SAFETY: `list` is an array ended by an entry with index 0 and a
        // null name; the loop stops at that entry.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: a non-final entry's name is a NUL-terminated string owned
        // by `list`, still alive here.
        let name = unsafe { CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from `if_nameindex` and is freed once; `names`
    // holds copies.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}

impl NetOps for RealNetOps {
    fn interfaces(&mut self) -> Result<Vec<Interface>, Errno> {
        let fd = self.inet()?;
        let mut interfaces = Vec::new();
        for name in interface_names()? {
            let mut ifr = ifreq(&name)?;
            // SAFETY: SIOCGIFHWADDR reads and writes a `struct ifreq`.
            match unsafe { ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) } {
                Ok(()) => {}
                // Gone since the listing.
                Err(Errno::ENODEV) => continue,
                Err(errno) => return Err(errno),
            }
            // SAFETY: the kernel filled `ifru_hwaddr`, plain integers.
            let hwaddr = unsafe { ifr.ifr_ifru.ifru_hwaddr };
            let mac =
                (hwaddr.sa_family == libc::ARPHRD_ETHER).then(|| format_mac(&hwaddr.sa_data[..6]));
            interfaces.push(Interface { name, mac });
        }
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(interfaces)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(from)?;
        ifr.ifr_ifru.ifru_newname = ifname_buf(to)?;
        // SAFETY: SIOCSIFNAME reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFNAME, &mut ifr) }
    }

    fn set_mtu(&mut self, ifname: &str, mtu: u32) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(ifname)?;
        ifr.ifr_ifru.ifru_mtu = c_int::try_from(mtu).map_err(|_| Errno::EINVAL)?;
        // SAFETY: SIOCSIFMTU reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFMTU, &mut ifr) }
    }

    fn set_mac(&mut self, ifname: &str, mac: [u8; MAC_LEN]) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(ifname)?;
        // SAFETY: `sockaddr` is plain old data; all zeroes is a valid value.
        let mut hwaddr: libc::sockaddr = unsafe { std::mem::zeroed() };
        hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hwaddr.sa_data.iter_mut().zip(mac) {
            *dst = c_char::from_ne_bytes([src]);
        }
        ifr.ifr_ifru.ifru_hwaddr = hwaddr;
        // SAFETY: SIOCSIFHWADDR reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFHWADDR, &mut ifr) }
    }

    fn set_ipv4_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno> {
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/{key}"), value)
    }

    fn set_ipv6_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno> {
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/{key}"), value)
    }

    fn add_ipv4(&mut self, label: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(label)?;
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        // SAFETY: SIOCSIFADDR on an AF_INET socket reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFADDR, &mut ifr) }?;
        // SIOCSIFADDR gave the address its classful mask; set the real one.
        let mut ifr = ifreq(label)?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4(netmask_v4(prefix_len));
        // SAFETY: SIOCSIFNETMASK reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFNETMASK, &mut ifr) }
    }

    fn add_ipv6(&mut self, ifname: &str, addr: Ipv6Addr, prefix_len: u8) -> Result<(), Errno> {
        let ifindex = self.ifindex(ifname)?;
        let fd = self.inet6()?;
        let mut req = libc::in6_ifreq {
            ifr6_addr: in6_addr(addr),
            ifr6_prefixlen: u32::from(prefix_len),
            ifr6_ifindex: ifindex,
        };
        // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads a `struct in6_ifreq`
        // (`addrconf_add_ifaddr`).
        unsafe { ioctl(fd, libc::SIOCSIFADDR, &mut req) }
    }

    fn set_up(&mut self, ifname: &str) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut ifr = ifreq(ifname)?;
        // SAFETY: SIOCGIFFLAGS reads and writes a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) }?;
        // SAFETY: the kernel filled `ifru_flags`; any short is a valid value.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags =
            c_short::try_from(c_int::from(flags) | libc::IFF_UP).map_err(|_| Errno::EOVERFLOW)?;
        // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`.
        unsafe { ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr) }
    }

    fn add_route_v4(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        dev: &str,
        metric: u32,
    ) -> Result<(), Errno> {
        let fd = self.inet()?;
        let mut devname = ifname_buf(dev)?;
        // SAFETY: `rtentry` holds integers, sockaddrs and a raw pointer: all
        // zeroes (a null `rt_dev`) is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(dst);
        rt.rt_genmask = sockaddr_v4(netmask_v4(prefix_len));
        rt.rt_flags = libc::RTF_UP;
        if let Some(gateway) = gateway {
            rt.rt_gateway = sockaddr_v4(gateway);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        // The kernel stores `rt_metric - 1` (0: no metric).
        rt.rt_metric = metric
            .checked_add(1)
            .and_then(|m| c_short::try_from(m).ok())
            .ok_or(Errno::ERANGE)?;
        // The kernel copies IFNAMSIZ - 1 bytes from `rt_dev`, so it points at
        // a full NUL-padded buffer, alive until the ioctl returns.
        rt.rt_dev = devname.as_mut_ptr();
        // SAFETY: SIOCADDRT on an AF_INET socket reads a `struct rtentry`,
        // and `rt_dev` points at a NUL-terminated name that outlives the call.
        unsafe { ioctl(fd, libc::SIOCADDRT, &mut rt) }
    }

    fn add_route_v6(
        &mut self,
        dst: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
        dev: &str,
        metric: u32,
    ) -> Result<(), Errno> {
        let ifindex = self.ifindex(dev)?;
        let fd = self.inet6()?;
        let mut flags = u32::from(libc::RTF_UP);
        if gateway.is_some() {
            flags |= u32::from(libc::RTF_GATEWAY);
        }
        let mut rt = In6Rtmsg {
            rtmsg_dst: in6_addr(dst),
            rtmsg_src: in6_addr(Ipv6Addr::UNSPECIFIED),
            rtmsg_gateway: in6_addr(gateway.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            // 0: the kernel makes it RTN_UNICAST.
            rtmsg_type: 0,
            rtmsg_dst_len: u16::from(prefix_len),
            rtmsg_src_len: 0,
            rtmsg_metric: metric,
            rtmsg_info: 0,
            rtmsg_flags: flags,
            rtmsg_ifindex: ifindex,
        };
        // SAFETY: SIOCADDRT on an AF_INET6 socket reads a `struct in6_rtmsg`,
        // which `In6Rtmsg` lays out.
        unsafe { ioctl(fd, libc::SIOCADDRT, &mut rt) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_proto::IpPrefix;

    const MAC_A: &str = "52:54:00:00:00:0a";
    const MAC_B: &str = "52:54:00:00:00:0b";
    const MAC_C: &str = "52:54:00:00:00:0c";

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Op {
        Interfaces,
        Rename(String, String),
        Mac(String, String),
        Ipv4Conf(String, String, String),
        Mtu(String, u32),
        Ipv6Conf(String, String, String),
        AddV4(String, Ipv4Addr, u8),
        AddV6(String, Ipv6Addr, u8),
        Up(String),
        RouteV4(Ipv4Addr, u8, Option<Ipv4Addr>, String, u32),
        RouteV6(Ipv6Addr, u8, Option<Ipv6Addr>, String, u32),
    }

    /// Records every call and keeps an interface table, so renames that
    /// would clash in the kernel clash here too.
    #[derive(Default)]
    struct Recorder {
        ops: Vec<Op>,
        interfaces: Vec<Interface>,
        no_ipv6: bool,
        fail_mtu: Option<Errno>,
    }

    impl Recorder {
        fn with(interfaces: &[(&str, &str)]) -> Self {
            let mut all = vec![Interface {
                name: "lo".into(),
                mac: None,
            }];
            all.extend(interfaces.iter().map(|(name, mac)| Interface {
                name: (*name).into(),
                mac: Some((*mac).into()),
            }));
            Recorder {
                interfaces: all,
                ..Recorder::default()
            }
        }

        fn exists(&self, label: &str) -> Result<(), Errno> {
            let name = label.split(':').next().unwrap_or(label);
            if self.interfaces.iter().any(|i| i.name == name) {
                Ok(())
            } else {
                Err(Errno::ENODEV)
            }
        }

        fn name_of(&self, mac: &str) -> &str {
            let found = self
                .interfaces
                .iter()
                .find(|i| i.mac.as_deref() == Some(mac));
            &found.expect("interface").name
        }
    }

    impl NetOps for Recorder {
        fn interfaces(&mut self) -> Result<Vec<Interface>, Errno> {
            self.ops.push(Op::Interfaces);
            Ok(self.interfaces.clone())
        }
        fn rename(&mut self, from: &str, to: &str) -> Result<(), Errno> {
            self.ops.push(Op::Rename(from.into(), to.into()));
            if self.interfaces.iter().any(|i| i.name == to) {
                return Err(Errno::EEXIST);
            }
            let interface = self.interfaces.iter_mut().find(|i| i.name == from);
            interface.ok_or(Errno::ENODEV)?.name = to.into();
            Ok(())
        }
        fn set_mac(&mut self, ifname: &str, mac: [u8; MAC_LEN]) -> Result<(), Errno> {
            let text = format_mac(&mac.map(|b| c_char::from_ne_bytes([b])));
            self.ops.push(Op::Mac(ifname.into(), text.clone()));
            let interface = self.interfaces.iter_mut().find(|i| i.name == ifname);
            interface.ok_or(Errno::ENODEV)?.mac = Some(text);
            Ok(())
        }
        fn set_ipv4_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno> {
            self.ops
                .push(Op::Ipv4Conf(ifname.into(), key.into(), value.into()));
            if ifname == "all" {
                Ok(())
            } else {
                self.exists(ifname)
            }
        }
        fn set_mtu(&mut self, ifname: &str, mtu: u32) -> Result<(), Errno> {
            self.ops.push(Op::Mtu(ifname.into(), mtu));
            self.exists(ifname)?;
            self.fail_mtu.map_or(Ok(()), Err)
        }
        fn set_ipv6_conf(&mut self, ifname: &str, key: &str, value: &str) -> Result<(), Errno> {
            self.ops
                .push(Op::Ipv6Conf(ifname.into(), key.into(), value.into()));
            if self.no_ipv6 {
                return Err(Errno::ENOENT);
            }
            if ifname == "all" {
                return Ok(());
            }
            self.exists(ifname)
        }
        fn add_ipv4(&mut self, label: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
            self.ops.push(Op::AddV4(label.into(), addr, prefix_len));
            self.exists(label)
        }
        fn add_ipv6(&mut self, ifname: &str, addr: Ipv6Addr, prefix_len: u8) -> Result<(), Errno> {
            self.ops.push(Op::AddV6(ifname.into(), addr, prefix_len));
            self.exists(ifname)
        }
        fn set_up(&mut self, ifname: &str) -> Result<(), Errno> {
            self.ops.push(Op::Up(ifname.into()));
            self.exists(ifname)
        }
        fn add_route_v4(
            &mut self,
            dst: Ipv4Addr,
            prefix_len: u8,
            gateway: Option<Ipv4Addr>,
            dev: &str,
            metric: u32,
        ) -> Result<(), Errno> {
            self.ops
                .push(Op::RouteV4(dst, prefix_len, gateway, dev.into(), metric));
            self.exists(dev)
        }
        fn add_route_v6(
            &mut self,
            dst: Ipv6Addr,
            prefix_len: u8,
            gateway: Option<Ipv6Addr>,
            dev: &str,
            metric: u32,
        ) -> Result<(), Errno> {
            self.ops
                .push(Op::RouteV6(dst, prefix_len, gateway, dev.into(), metric));
            self.exists(dev)
        }
    }

    fn prefix(text: &str) -> IpPrefix {
        let (addr, len) = text.split_once('/').expect("addr/len");
        IpPrefix {
            addr: addr.parse().expect("address"),
            prefix_len: len.parse().expect("prefix length"),
        }
    }

    fn nic(mac: &str, name: &str, addrs: &[&str]) -> GuestNic {
        GuestNic {
            mac: mac.into(),
            name: name.into(),
            mtu: 1500,
            addrs: addrs.iter().map(|a| prefix(a)).collect(),
            probed_mac: None,
        }
    }

    fn route(dst: &str, gateway: Option<&str>, dev: &str, metric: u32) -> GuestRoute {
        GuestRoute {
            dst: prefix(dst),
            gateway: gateway.map(|g| g.parse().expect("gateway")),
            dev: dev.into(),
            metric,
        }
    }

    fn setup(nics: Vec<GuestNic>, routes: Vec<GuestRoute>) -> NetSetup {
        NetSetup { nics, routes }
    }

    fn v4(text: &str) -> Ipv4Addr {
        text.parse().expect("IPv4 address")
    }

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().expect("IPv6 address")
    }

    fn up(name: &str) -> Op {
        Op::Up(name.into())
    }

    #[test]
    fn empty_setup_only_brings_lo_up() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        configure_with(&mut ops, &NetSetup::default()).expect("configure");
        assert_eq!(ops.ops, vec![up("lo")]);
    }

    #[test]
    fn one_nic_with_both_families_and_default_routes() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        let mut eth0 = nic(MAC_A, "eth0", &["10.88.0.2/16", "fd00::2/64"]);
        eth0.mtu = 1450;
        let net = setup(
            vec![eth0],
            vec![
                route("0.0.0.0/0", Some("10.88.0.1"), "eth0", 0),
                route("::/0", Some("fd00::1"), "eth0", 1024),
            ],
        );
        configure_with(&mut ops, &net).expect("configure");
        assert_eq!(
            ops.ops,
            vec![
                up("lo"),
                Op::Interfaces,
                Op::Ipv4Conf("all".into(), "arp_notify".into(), "1".into()),
                Op::Ipv6Conf("all".into(), "ndisc_notify".into(), "1".into()),
                Op::Mtu("eth0".into(), 1450),
                Op::Ipv6Conf("eth0".into(), "disable_ipv6".into(), "0".into()),
                Op::Ipv6Conf("eth0".into(), "accept_dad".into(), "0".into()),
                Op::AddV4("eth0".into(), v4("10.88.0.2"), 16),
                Op::AddV6("eth0".into(), v6("fd00::2"), 64),
                up("eth0"),
                Op::RouteV4(v4("0.0.0.0"), 0, Some(v4("10.88.0.1")), "eth0".into(), 0),
                Op::RouteV6(v6("::"), 0, Some(v6("fd00::1")), "eth0".into(), 1024),
            ]
        );
    }

    #[test]
    fn ipv4_only_nic_leaves_ipv6_settings_alone_and_mtu_zero_keeps_the_mtu() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        ops.no_ipv6 = true;
        let mut eth0 = nic(MAC_A, "eth0", &["10.0.0.2/24"]);
        eth0.mtu = 0;
        configure_with(&mut ops, &setup(vec![eth0], vec![])).expect("configure");
        assert_eq!(
            ops.ops,
            vec![
                up("lo"),
                Op::Interfaces,
                Op::Ipv4Conf("all".into(), "arp_notify".into(), "1".into()),
                Op::AddV4("eth0".into(), v4("10.0.0.2"), 24),
                up("eth0"),
            ]
        );
    }

    #[test]
    fn further_ipv4_addresses_go_on_alias_labels() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        let eth0 = nic(
            MAC_A,
            "eth0",
            &["10.0.0.2/24", "fd00::2/64", "10.0.1.2/24", "192.168.5.5/32"],
        );
        configure_with(&mut ops, &setup(vec![eth0], vec![])).expect("configure");
        let adds: Vec<&Op> = ops
            .ops
            .iter()
            .filter(|op| matches!(op, Op::AddV4(..) | Op::AddV6(..)))
            .collect();
        assert_eq!(
            adds,
            vec![
                &Op::AddV4("eth0".into(), v4("10.0.0.2"), 24),
                &Op::AddV6("eth0".into(), v6("fd00::2"), 64),
                &Op::AddV4("eth0:1".into(), v4("10.0.1.2"), 24),
                &Op::AddV4("eth0:2".into(), v4("192.168.5.5"), 32),
            ]
        );
    }

    #[test]
    fn alias_label_too_long_is_refused_before_anything_happens() {
        let mut ops = Recorder::with(&[("abcdefghijklmn", MAC_A)]);
        let long = nic(MAC_A, "abcdefghijklmn", &["10.0.0.2/24", "10.0.1.2/24"]);
        let err = configure_with(&mut ops, &setup(vec![long], vec![])).expect_err("too long");
        assert!(
            matches!(err, NetError::AliasLabelTooLong { ref label, .. } if label == "abcdefghijklmn:1")
        );
        assert!(ops.ops.is_empty());
    }

    #[test]
    fn renames_when_the_probe_name_differs() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        let net0 = nic(MAC_A, "net0", &["10.0.0.2/24"]);
        configure_with(
            &mut ops,
            &setup(
                vec![net0],
                vec![route("0.0.0.0/0", Some("10.0.0.1"), "net0", 0)],
            ),
        )
        .expect("configure");
        assert_eq!(
            ops.ops,
            vec![
                up("lo"),
                Op::Interfaces,
                Op::Ipv4Conf("all".into(), "arp_notify".into(), "1".into()),
                Op::Rename("eth0".into(), "net0".into()),
                Op::Mtu("net0".into(), 1500),
                Op::AddV4("net0".into(), v4("10.0.0.2"), 24),
                up("net0"),
                Op::RouteV4(v4("0.0.0.0"), 0, Some(v4("10.0.0.1")), "net0".into(), 0),
            ]
        );
    }

    #[test]
    fn chained_renames_go_in_an_order_that_never_clashes() {
        // eth0 -> ext0 must happen before eth1 -> eth0.
        let mut ops = Recorder::with(&[("eth0", MAC_A), ("eth1", MAC_B)]);
        let nics = vec![nic(MAC_B, "eth0", &[]), nic(MAC_A, "ext0", &[])];
        configure_with(&mut ops, &setup(nics, vec![])).expect("configure");
        let renames: Vec<&Op> = ops
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Rename(..)))
            .collect();
        assert_eq!(
            renames,
            vec![
                &Op::Rename("eth0".into(), "ext0".into()),
                &Op::Rename("eth1".into(), "eth0".into()),
            ]
        );
        assert_eq!(ops.name_of(MAC_A), "ext0");
        assert_eq!(ops.name_of(MAC_B), "eth0");
    }

    #[test]
    fn swapped_names_go_through_a_temporary_name() {
        let mut ops = Recorder::with(&[("eth0", MAC_A), ("eth1", MAC_B)]);
        let nics = vec![
            nic(MAC_A, "eth1", &["10.0.1.2/24"]),
            nic(MAC_B, "eth0", &["10.0.0.2/24"]),
        ];
        configure_with(&mut ops, &setup(nics, vec![])).expect("configure");
        assert_eq!(
            ops.ops,
            vec![
                up("lo"),
                Op::Interfaces,
                Op::Ipv4Conf("all".into(), "arp_notify".into(), "1".into()),
                Op::Rename("eth0".into(), "husk-tmp0".into()),
                Op::Rename("eth1".into(), "eth0".into()),
                Op::Rename("husk-tmp0".into(), "eth1".into()),
                Op::Mtu("eth1".into(), 1500),
                Op::AddV4("eth1".into(), v4("10.0.1.2"), 24),
                up("eth1"),
                Op::Mtu("eth0".into(), 1500),
                Op::AddV4("eth0".into(), v4("10.0.0.2"), 24),
                up("eth0"),
            ]
        );
        assert_eq!(ops.name_of(MAC_A), "eth1");
        assert_eq!(ops.name_of(MAC_B), "eth0");
    }

    /// Placeholder MACs a template VM's guest probed its NICs with.
    const PROBED_0: &str = "02:68:75:73:6b:00";
    const PROBED_1: &str = "02:68:75:73:6b:01";

    fn probed(mut nic: GuestNic, mac: &str) -> GuestNic {
        nic.probed_mac = Some(mac.into());
        nic
    }

    #[test]
    fn restored_nics_get_their_own_macs_before_they_are_named() {
        let mut ops = Recorder::with(&[("eth0", PROBED_0), ("eth1", PROBED_1)]);
        // The second device holds the first NIC of the setup.
        let nics = vec![
            probed(nic(MAC_A, "eth0", &["10.0.0.2/24"]), PROBED_1),
            probed(nic(MAC_B, "eth1", &["10.0.1.2/24"]), PROBED_0),
        ];
        configure_with(&mut ops, &setup(nics, vec![])).expect("configure");
        assert_eq!(
            ops.ops[..4],
            [
                up("lo"),
                Op::Interfaces,
                Op::Mac("eth1".into(), MAC_A.into()),
                Op::Mac("eth0".into(), MAC_B.into()),
            ]
        );
        assert_eq!(ops.name_of(MAC_A), "eth0");
        assert_eq!(ops.name_of(MAC_B), "eth1");
        let macs = ops.ops.iter().filter(|op| matches!(op, Op::Mac(..)));
        assert_eq!(macs.count(), 2);
        assert!(ops.ops.contains(&up("eth0")) && ops.ops.contains(&up("eth1")));
    }

    #[test]
    fn a_nics_own_mac_may_be_the_probed_mac_of_another() {
        // Every interface is found by its probed MAC before any changes.
        let mut ops = Recorder::with(&[("eth0", PROBED_0), ("eth1", PROBED_1)]);
        let nics = vec![
            probed(nic(PROBED_1, "eth0", &[]), PROBED_0),
            probed(nic(PROBED_0, "eth1", &[]), PROBED_1),
        ];
        configure_with(&mut ops, &setup(nics, vec![])).expect("configure");
        assert_eq!(ops.name_of(PROBED_1), "eth0");
        assert_eq!(ops.name_of(PROBED_0), "eth1");
        assert!(!ops.ops.iter().any(|op| matches!(op, Op::Rename(..))));
    }

    #[test]
    fn bad_probed_macs_are_refused_before_anything_changes() {
        let cases = [
            (
                vec![probed(nic(MAC_A, "eth0", &[]), "02:68:75:73:6b")],
                "not six",
            ),
            (
                vec![probed(nic(MAC_A, "eth0", &[]), "02:68:75:73:6b:0g")],
                "not six",
            ),
            (
                vec![probed(nic(MAC_A, "eth0", &[]), "02:68:75:73:6b:00:01")],
                "not six",
            ),
            (
                vec![probed(nic(MAC_A, "eth0", &[]), "02:68:75:73:6b:+1")],
                "not six",
            ),
            (vec![probed(nic("junk", "eth0", &[]), PROBED_0)], "not six"),
            (
                vec![
                    probed(nic(MAC_A, "eth0", &[]), PROBED_0),
                    probed(nic(MAC_B, "eth1", &[]), PROBED_0),
                ],
                "both probed",
            ),
        ];
        for (nics, want) in cases {
            let mut ops = Recorder::with(&[("eth0", PROBED_0), ("eth1", PROBED_1)]);
            let err = configure_with(&mut ops, &setup(nics.clone(), vec![])).expect_err("bad");
            assert!(err.to_string().contains(want), "{nics:?}: {err}");
            assert!(ops.ops.is_empty(), "{nics:?}: {:?}", ops.ops);
        }
    }

    #[test]
    fn a_probed_mac_no_interface_has_changes_nothing() {
        let mut ops = Recorder::with(&[("eth0", PROBED_0)]);
        let nics = vec![probed(nic(MAC_A, "eth0", &[]), PROBED_1)];
        let err = configure_with(&mut ops, &setup(nics, vec![])).expect_err("missing");
        assert!(matches!(err, NetError::NoInterfaceWithMac { ref mac, .. } if mac == PROBED_1));
        assert!(!ops
            .ops
            .iter()
            .any(|op| matches!(op, Op::Mac(..) | Op::Rename(..))));
        assert_eq!(ops.name_of(PROBED_0), "eth0");
    }

    #[test]
    fn a_three_way_rotation_ends_with_every_wanted_name() {
        let mut ops = Recorder::with(&[("eth0", MAC_A), ("eth1", MAC_B), ("eth2", MAC_C)]);
        let nics = vec![
            nic(MAC_A, "eth1", &[]),
            nic(MAC_B, "eth2", &[]),
            nic(MAC_C, "eth0", &[]),
        ];
        configure_with(&mut ops, &setup(nics, vec![])).expect("configure");
        assert_eq!(ops.name_of(MAC_A), "eth1");
        assert_eq!(ops.name_of(MAC_B), "eth2");
        assert_eq!(ops.name_of(MAC_C), "eth0");
        let renames = ops.ops.iter().filter(|op| matches!(op, Op::Rename(..)));
        assert_eq!(renames.count(), 4);
    }

    #[test]
    fn a_wanted_name_held_by_an_interface_outside_the_setup_is_refused() {
        let mut ops = Recorder::with(&[("eth0", MAC_A), ("eth1", MAC_B)]);
        let err = configure_with(&mut ops, &setup(vec![nic(MAC_A, "eth1", &[])], vec![]))
            .expect_err("taken");
        assert!(matches!(err, NetError::NameTaken { ref name, .. } if name == "eth1"));
        assert!(!ops.ops.iter().any(|op| matches!(op, Op::Rename(..))));
    }

    #[test]
    fn missing_mac_is_named_in_the_error() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        let err = configure_with(&mut ops, &setup(vec![nic(MAC_B, "eth0", &[])], vec![]))
            .expect_err("no such MAC");
        assert!(matches!(err, NetError::NoInterfaceWithMac { ref mac, .. } if mac == MAC_B));
        assert_eq!(
            err.to_string(),
            format!("no network interface has MAC {MAC_B} (the NIC to be named eth0)")
        );
    }

    #[test]
    fn mac_matching_ignores_case() {
        let upper = MAC_A.to_ascii_uppercase();
        let mut ops = Recorder::with(&[("eth0", &upper)]);
        configure_with(&mut ops, &setup(vec![nic(MAC_A, "net0", &[])], vec![]))
            .expect("lowercase setup, uppercase kernel");
        assert!(ops.ops.contains(&Op::Rename("eth0".into(), "net0".into())));

        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        configure_with(&mut ops, &setup(vec![nic(&upper, "net0", &[])], vec![]))
            .expect("uppercase setup, lowercase kernel");
        assert!(ops.ops.contains(&Op::Rename("eth0".into(), "net0".into())));
    }

    #[test]
    fn duplicate_names_and_macs_are_refused() {
        let mut ops = Recorder::with(&[("eth0", MAC_A), ("eth1", MAC_B)]);
        let names = setup(
            vec![nic(MAC_A, "eth0", &[]), nic(MAC_B, "eth0", &[])],
            vec![],
        );
        let err = configure_with(&mut ops, &names).expect_err("same name");
        assert!(matches!(err, NetError::DuplicateName { .. }));
        let upper = MAC_A.to_ascii_uppercase();
        let macs = setup(
            vec![nic(MAC_A, "eth0", &[]), nic(&upper, "eth1", &[])],
            vec![],
        );
        let err = configure_with(&mut ops, &macs).expect_err("same MAC");
        assert!(matches!(err, NetError::DuplicateMac { .. }));
        assert!(ops.ops.is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            "",
            "a/b",
            "eth0:1",
            "a b",
            "abcdefghijklmnop",
            "..",
            "husk-tmp3",
        ] {
            let err = validate(&setup(vec![nic(MAC_A, name, &[])], vec![])).expect_err(name);
            assert!(matches!(err, NetError::BadName { .. }), "{name}: {err}");
        }
        validate(&setup(vec![nic(MAC_A, "abcdefghijklmno", &[])], vec![])).expect("15 bytes");
    }

    #[test]
    fn route_to_an_unknown_device_is_refused_before_anything_happens() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        let net = setup(
            vec![nic(MAC_A, "eth0", &["10.0.0.2/24"])],
            vec![route("0.0.0.0/0", Some("10.0.0.1"), "eth9", 0)],
        );
        let err = configure_with(&mut ops, &net).expect_err("unknown dev");
        assert!(matches!(err, NetError::RouteUnknownDev { ref dev, .. } if dev == "eth9"));
        assert_eq!(
            err.to_string(),
            "route 0.0.0.0/0: device eth9 is not one of the guest NICs"
        );
        assert!(ops.ops.is_empty());

        let routes_only = setup(vec![], vec![route("10.0.0.0/8", None, "eth0", 0)]);
        let err = configure_with(&mut ops, &routes_only).expect_err("no NICs at all");
        assert!(matches!(err, NetError::RouteUnknownDev { .. }));
    }

    #[test]
    fn route_with_mixed_families_is_refused() {
        let net = setup(
            vec![nic(MAC_A, "eth0", &[])],
            vec![route("::/0", Some("10.0.0.1"), "eth0", 0)],
        );
        let err = validate(&net).expect_err("mixed");
        assert!(matches!(err, NetError::RouteFamilyMismatch { .. }));
        assert_eq!(
            err.to_string(),
            "route ::/0 dev eth0: gateway 10.0.0.1 is of another address family"
        );
    }

    #[test]
    fn bad_route_destinations_and_metrics_are_refused() {
        let check = |r: GuestRoute| validate(&setup(vec![nic(MAC_A, "eth0", &[])], vec![r]));
        let err = check(route("10.0.0.0/33", None, "eth0", 0)).expect_err("/33");
        assert!(matches!(err, NetError::RoutePrefixTooLong { .. }));
        let err = check(route("fd00::/129", None, "eth0", 0)).expect_err("/129");
        assert!(matches!(err, NetError::RoutePrefixTooLong { .. }));
        let err = check(route("10.1.2.3/16", None, "eth0", 0)).expect_err("host bits");
        assert!(matches!(err, NetError::RouteHostBits { .. }));
        let err = check(route("10.0.0.0/8", None, "eth0", 40000)).expect_err("metric");
        assert!(matches!(
            err,
            NetError::RouteMetricTooLarge { metric: 40000, .. }
        ));
        check(route("10.0.0.0/8", None, "eth0", MAX_IPV4_ROUTE_METRIC)).expect("largest metric");
        check(route("fd00::/64", None, "eth0", 40000)).expect("IPv6 metrics are u32");
        check(route("10.1.2.3/32", None, "eth0", 0)).expect("host route");
    }

    #[test]
    fn address_prefix_too_long_is_refused() {
        let err =
            validate(&setup(vec![nic(MAC_A, "eth0", &["10.0.0.2/40"])], vec![])).expect_err("/40");
        assert!(matches!(err, NetError::BadAddress { prefix_len: 40, .. }));
    }

    #[test]
    fn os_errors_read_well() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        ops.fail_mtu = Some(Errno::EINVAL);
        let mut eth0 = nic(MAC_A, "eth0", &[]);
        eth0.mtu = 1450;
        let err = configure_with(&mut ops, &setup(vec![eth0], vec![])).expect_err("mtu");
        assert_eq!(
            err.to_string(),
            "setting MTU 1450 on eth0: Invalid argument"
        );

        let err = NetError::AddRoute {
            dst: "0.0.0.0".parse().expect("address"),
            prefix_len: 0,
            gateway: Some("10.0.0.1".parse().expect("address")),
            dev: "eth0".into(),
            errno: Errno::ENETUNREACH,
        };
        assert_eq!(
            err.to_string(),
            "adding route 0.0.0.0/0 via 10.0.0.1 dev eth0: Network is unreachable"
        );
    }

    #[test]
    fn ipv6_address_without_kernel_ipv6_says_so() {
        let mut ops = Recorder::with(&[("eth0", MAC_A)]);
        ops.no_ipv6 = true;
        let net = setup(vec![nic(MAC_A, "eth0", &["fd00::2/64"])], vec![]);
        let err = configure_with(&mut ops, &net).expect_err("no IPv6");
        assert!(matches!(err, NetError::NoIpv6 { ref ifname } if ifname == "eth0"));
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_v4(0), v4("0.0.0.0"));
        assert_eq!(netmask_v4(1), v4("128.0.0.0"));
        assert_eq!(netmask_v4(16), v4("255.255.0.0"));
        assert_eq!(netmask_v4(31), v4("255.255.255.254"));
        assert_eq!(netmask_v4(32), v4("255.255.255.255"));
    }

    #[test]
    fn sockaddr_v4_is_laid_out_as_sockaddr_in() {
        let sa = sockaddr_v4(v4("10.88.0.2"));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| b.to_ne_bytes()[0]).collect();
        assert_eq!(bytes, [0, 0, 10, 88, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn kernel_struct_layouts() {
        // linux/ipv6_route.h: three in6_addr, u32, two u16, u32, unsigned
        // long (aligned), u32, int.
        let long = std::mem::size_of::<c_ulong>();
        let unaligned: usize = 3 * 16 + 4 + 2 + 2 + 4;
        let info_at = unaligned.div_ceil(long) * long;
        assert_eq!(std::mem::offset_of!(In6Rtmsg, rtmsg_info), info_at);
        assert_eq!(
            std::mem::size_of::<In6Rtmsg>(),
            (info_at + long + 8).div_ceil(long) * long
        );
        // linux/ipv6.h: in6_addr, u32, int.
        assert_eq!(std::mem::size_of::<libc::in6_ifreq>(), 24);
        // linux/if.h: IFNAMSIZ name, then a 24-byte union on 64-bit.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<libc::ifreq>(), 40);
        assert_eq!(
            format_mac(&[0x52_u8, 0x54, 0, 0x12, 0x34, 0x56].map(|b| c_char::from_ne_bytes([b]))),
            "52:54:00:12:34:56"
        );
    }

    /// The real ioctls, in a network namespace of this test's own thread
    /// (needs root, as CI and `make test` run). A new namespace has only
    /// `lo`, down, with no addresses.
    #[test]
    fn real_ioctls_in_a_private_network_namespace() {
        let result = std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this
            // thread, which nothing else uses, into a new namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                Errno::last().desc()
            );
            let mut ops = RealNetOps::new();
            let lo = Interface {
                name: "lo".into(),
                mac: None,
            };
            assert_eq!(ops.interfaces().expect("list"), vec![lo.clone()]);

            ops.rename("lo", "husklo").expect("rename while down");
            let names: Vec<String> = ops
                .interfaces()
                .expect("list")
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(names, ["husklo"]);
            ops.rename("husklo", "lo").expect("rename back");
            let err = ops
                .rename("nosuch0", "nosuch1")
                .expect_err("no such interface");
            assert_eq!(err, Errno::ENODEV);

            ops.set_mtu("lo", 60000).expect("mtu");
            configure_with(&mut ops, &NetSetup::default()).expect("lo up");
            let route = |table: &str| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{table}"))
                    .expect("route table")
            };

            ops.add_ipv4("lo:1", v4("10.253.0.1"), 32)
                .expect("alias address");
            assert!(route("fib_trie").contains("10.253.0.1"));

            ops.add_route_v4(v4("10.254.0.0"), 16, None, "lo", 5)
                .expect("route");
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            let line = route("route")
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some("0000FE0A"))
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .expect("10.254.0.0 in /proc/net/route");
            assert_eq!(line[0], "lo");
            assert_eq!(line[6], "5", "metric");
            assert_eq!(line[7], "0000FFFF", "mask");

            assert!(
                std::path::Path::new("/proc/thread-self/net/if_inet6").exists(),
                "the host kernel has no IPv6"
            );
            ops.set_ipv6_conf("lo", "accept_dad", "0")
                .expect("accept_dad");
            let err = ops
                .set_ipv6_conf("nosuch0", "accept_dad", "0")
                .expect_err("no such");
            assert_eq!(err, Errno::ENOENT);
            ops.add_ipv6("lo", v6("fd00::1"), 128)
                .expect("IPv6 address");
            assert!(route("if_inet6").contains("fd000000000000000000000000000001"));
            ops.add_route_v6(v6("fd01::"), 64, None, "lo", 7)
                .expect("IPv6 route");
            // dst dst_len src src_len next_hop metric refcnt use flags dev
            let line = route("ipv6_route")
                .lines()
                .find(|l| l.starts_with("fd010000000000000000000000000000 40 "))
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .expect("fd01::/64 in /proc/net/ipv6_route");
            assert_eq!(line[5], "00000007", "metric");
            assert_eq!(line[9], "lo");
        })
        .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
