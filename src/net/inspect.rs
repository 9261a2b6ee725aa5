//! What an engine's network namespace holds, read with iproute2's JSON
//! output (`ip -j addr`, `ip -j route`), and the guest network that stands
//! for it.
//!
//! Parsing and planning are pure functions over the JSON text so they are
//! unit-tested with output captured from `ip`.

use std::net::IpAddr;

use serde::Deserialize;

use crate::agent_proto::{GuestNic, GuestRoute, IpPrefix, NetSetup};

use super::NetError;

/// Prefix of the taps husk creates in a namespace (never taken for NICs).
pub const TAP_PREFIX: &str = "husktap";

/// One interface of the namespace as `ip -j addr show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub link_type: String,
    /// The MAC, for Ethernet-like links.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

/// One address of a [`Link`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AddrInfo {
    pub family: String,
    pub local: IpAddr,
    pub prefixlen: u8,
    #[serde(default)]
    pub scope: String,
}

/// One route as `ip -j route show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// `default`, `10.0.0.0/8` or a host address.
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    /// Absent for unicast routes.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
}

/// A namespace interface taken for the VM, with the tap that will carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// The interface in the namespace (the engine's veth end).
    pub ifname: String,
    /// The tap husk creates beside it.
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Parses `ip -j addr show`.
pub fn parse_links(json: &str) -> Result<Vec<Link>, NetError> {
    serde_json::from_str(json).map_err(|source| NetError::IpJson {
        what: "ip -j addr show",
        source,
    })
}

/// Parses `ip -j route show` (IPv4 or IPv6).
pub fn parse_routes(json: &str) -> Result<Vec<Route>, NetError> {
    // `ip -j` prints nothing at all (not `[]`) for an empty table on some
    // versions.
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).map_err(|source| NetError::IpJson {
        what: "ip -j route show",
        source,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC the way the guest compares it (lowercase).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_dst(dst: &str) -> Option<IpPrefix> {
    let (addr, len) = match dst.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (dst.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = len.unwrap_or(max);
    (prefix_len <= max).then_some(IpPrefix { addr, prefix_len })
}

/// Which interfaces become NICs and what the guest is told: every Ethernet
/// link that is up, except loopback and husk's own taps; their global
/// addresses; the main-table unicast routes through them that the kernel
/// did not derive from an address (`proto kernel`). Routes the guest could
/// not have (multipath, through other devices) are left out and returned
/// as warnings.
pub fn plan(
    links: &[Link],
    v4_routes: &[Route],
    v6_routes: &[Route],
) -> Result<(Vec<NicPlan>, NetSetup, Vec<String>), NetError> {
    let mut nics = Vec::new();
    let mut setup = NetSetup::default();
    let mut warnings = Vec::new();
    for link in links {
        if link.link_type != "ether" || link.ifname.starts_with(TAP_PREFIX) {
            continue;
        }
        if !link.flags.iter().any(|f| f == "UP") {
            warnings.push(format!(
                "interface {} is down: not given to the VM",
                link.ifname
            ));
            continue;
        }
        let mac = link
            .address
            .as_deref()
            .and_then(parse_mac)
            .ok_or_else(|| NetError::NoMac {
                ifname: link.ifname.clone(),
            })?;
        let addrs = link
            .addr_info
            .iter()
            .filter(|a| a.scope == "global")
            .map(|a| IpPrefix {
                addr: a.local,
                prefix_len: a.prefixlen,
            })
            .collect();
        let tap = format!("{TAP_PREFIX}{}", nics.len());
        nics.push(NicPlan {
            ifname: link.ifname.clone(),
            tap,
            mac,
            mtu: link.mtu,
        });
        setup.nics.push(GuestNic {
            mac: format_mac(&mac),
            name: link.ifname.clone(),
            mtu: link.mtu,
            addrs,
            probed_mac: None,
        });
    }
    let tagged = v4_routes.iter().map(|r| (r, false));
    for (r, v6) in tagged.chain(v6_routes.iter().map(|r| (r, true))) {
        if r.protocol.as_deref() == Some("kernel") {
            continue;
        }
        if r.kind.as_deref().is_some_and(|k| k != "unicast") {
            continue;
        }
        let Some(dev) = r.dev.as_deref() else {
            warnings.push(format!("route {} has no single device: left out", r.dst));
            continue;
        };
        if !setup.nics.iter().any(|n| n.name == dev) {
            continue;
        }
        let dst = if r.dst == "default" {
            Some(IpPrefix {
                addr: if v6 {
                    IpAddr::from([0u16; 8])
                } else {
                    IpAddr::from([0u8; 4])
                },
                prefix_len: 0,
            })
        } else {
            parse_dst(&r.dst)
        };
        let Some(dst) = dst else {
            warnings.push(format!("route {} cannot be read: left out", r.dst));
            continue;
        };
        setup.routes.push(GuestRoute {
            dst,
            gateway: r.gateway,
            dev: dev.to_owned(),
            metric: r.metric.unwrap_or(0),
        });
    }
    Ok((nics, setup, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    // As printed by iproute2 6.1 in a namespace set up like the CNI bridge
    // plugin does (veth eth0 with a v4 and a v6 address).
    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"link_index":5,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"9A:0b:1c:2d:3e:4f","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.88.0.2","prefixlen":16,"broadcast":"10.88.255.255","scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fd00::2","prefixlen":64,"scope":"global","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::980b:1cff:fe2d:3e4f","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":3,"ifname":"husktap0","flags":["BROADCAST","UP"],"mtu":1450,"link_type":"ether","address":"aa:aa:aa:aa:aa:aa","addr_info":[]},{"ifindex":4,"ifname":"eth1","flags":["BROADCAST","MULTICAST"],"mtu":1500,"link_type":"ether","address":"02:00:00:00:00:01","addr_info":[]}]"#;
    const ROUTES4: &str = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]},{"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.2","flags":[]},{"dst":"192.168.7.0/24","gateway":"10.88.0.254","dev":"eth0","metric":5,"flags":[]},{"type":"blackhole","dst":"10.99.0.0/16","flags":[]},{"dst":"10.0.0.9","dev":"eth0","scope":"link","flags":[]},{"dst":"172.16.0.0/12","flags":[],"nexthops":[{"gateway":"10.88.0.1","dev":"eth0"}]}]"#;
    const ROUTES6: &str = r#"[{"dst":"fd00::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"default","gateway":"fd00::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}]"#;

    #[test]
    fn a_cni_style_namespace_becomes_one_nic_with_its_routes() {
        let links = parse_links(ADDRS).unwrap();
        let (nics, setup, warnings) = plan(
            &links,
            &parse_routes(ROUTES4).unwrap(),
            &parse_routes(ROUTES6).unwrap(),
        )
        .unwrap();
        assert_eq!(
            nics,
            vec![NicPlan {
                ifname: "eth0".into(),
                tap: "husktap0".into(),
                mac: [0x9a, 0x0b, 0x1c, 0x2d, 0x3e, 0x4f],
                mtu: 1450,
            }]
        );
        assert_eq!(setup.nics.len(), 1);
        let nic = &setup.nics[0];
        assert_eq!(nic.mac, "9a:0b:1c:2d:3e:4f");
        assert_eq!((nic.name.as_str(), nic.mtu), ("eth0", 1450));
        let addrs: Vec<String> = nic
            .addrs
            .iter()
            .map(|a| format!("{}/{}", a.addr, a.prefix_len))
            .collect();
        assert_eq!(addrs, ["10.88.0.2/16", "fd00::2/64"]);
        let routes: Vec<String> = setup
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{}/{} via {:?} dev {} metric {}",
                    r.dst.addr, r.dst.prefix_len, r.gateway, r.dev, r.metric
                )
            })
            .collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via Some(10.88.0.1) dev eth0 metric 0",
                "192.168.7.0/24 via Some(10.88.0.254) dev eth0 metric 5",
                "10.0.0.9/32 via None dev eth0 metric 0",
                "::/0 via Some(fd00::1) dev eth0 metric 1024",
            ]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("eth1 is down"));
        assert!(warnings[1].contains("172.16.0.0/12"));
    }

    #[test]
    fn a_fresh_namespace_has_no_nics() {
        let lo_only = &ADDRS[..ADDRS.find(r#",{"ifindex":2"#).unwrap()];
        let links = parse_links(&format!("{lo_only}]")).unwrap();
        let (nics, setup, _) = plan(&links, &parse_routes("").unwrap(), &[]).unwrap();
        assert!(nics.is_empty());
        assert_eq!(setup, NetSetup::default());
    }

    #[test]
    fn an_ethernet_link_without_a_mac_is_an_error() {
        let links = parse_links(
            r#"[{"ifname":"eth0","flags":["UP"],"mtu":1500,"link_type":"ether","addr_info":[]}]"#,
        )
        .unwrap();
        let err = plan(&links, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(
            parse_mac("02:AB:cd:00:01:ff"),
            Some([2, 0xab, 0xcd, 0, 1, 0xff])
        );
        assert_eq!(parse_mac("02:ab:cd:00:01"), None);
        assert_eq!(parse_mac("02:ab:cd:00:01:ff:00"), None);
        assert_eq!(parse_mac("zz:ab:cd:00:01:ff"), None);
        assert_eq!(
            format_mac(&[2, 0xab, 0xcd, 0, 1, 0xff]),
            "02:ab:cd:00:01:ff"
        );
    }

    #[test]
    fn bad_json_is_named() {
        let err = parse_links("not json").unwrap_err();
        assert!(err.to_string().contains("ip -j addr show"), "{err}");
    }
}
