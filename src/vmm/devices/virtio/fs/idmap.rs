//! User and group ids between a user-namespaced container and the host, for
//! its shared files (OCI `linux.uidMappings` / `gidMappings`).
//!
//! The container's processes run in the guest with the container's ids; the
//! files they create on the host must be owned by the host ids the mapping
//! gives (root in the container -> the first host id of the range), and
//! files on the host appear inside with the container's ids, as the
//! kernel's user namespaces show them to a runc container: a host id
//! outside the mapping shows as [`OVERFLOW_ID`] (`nobody`), and a container
//! id outside it cannot own a file (`EOVERFLOW` for a create, `EINVAL` for
//! a chown). An empty map is the identity (no user namespace).

use serde::{Deserialize, Serialize};

/// What an unmapped host id looks like inside (`/proc/sys/fs/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;
/// Most ranges one map may have (the kernel's limit for `uid_map`).
pub const MAX_RANGES: usize = 340;

/// One range: container ids `container..container+size` are host ids
/// `host..host+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// Why a mapping is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("{which}: a range of size 0 (containerID {container})")]
    Empty { which: &'static str, container: u32 },
    #[error("{which}: the range at containerID {container} (size {size}) runs past 2^32")]
    Overflow {
        which: &'static str,
        container: u32,
        size: u32,
    },
    #[error("{which}: ranges overlap (at {side}ID {at})")]
    Overlap {
        which: &'static str,
        side: &'static str,
        at: u32,
    },
    #[error("{which}: {count} ranges; the kernel allows at most {MAX_RANGES}")]
    TooMany { which: &'static str, count: usize },
    #[error("{which}: line {line} is not `inside outside count`")]
    Malformed { which: &'static str, line: usize },
}

/// A checked map of one kind of id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

fn end(start: u32, size: u32) -> Option<u64> {
    u64::from(start).checked_add(u64::from(size))
}

impl IdMap {
    /// Checks `ranges` (`which` names them in errors, e.g.
    /// `linux.uidMappings`): non-empty, within 32 bits, no two overlapping
    /// on either side.
    pub fn new(which: &'static str, ranges: Vec<IdRange>) -> Result<IdMap, IdMapError> {
        if ranges.len() > MAX_RANGES {
            return Err(IdMapError::TooMany {
                which,
                count: ranges.len(),
            });
        }
        for r in &ranges {
            if r.size == 0 {
                return Err(IdMapError::Empty {
                    which,
                    container: r.container,
                });
            }
            let too_big = |start: u32| end(start, r.size).is_none_or(|e| e > 1 << 32);
            if too_big(r.container) || too_big(r.host) {
                return Err(IdMapError::Overflow {
                    which,
                    container: r.container,
                    size: r.size,
                });
            }
        }
        for (side, key) in [
            (
                "container",
                (|r: &IdRange| r.container) as fn(&IdRange) -> u32,
            ),
            ("host", |r: &IdRange| r.host),
        ] {
            let mut sorted = ranges.clone();
            sorted.sort_by_key(key);
            for pair in sorted.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if end(key(a), a.size).unwrap_or(u64::MAX) > u64::from(key(b)) {
                    return Err(IdMapError::Overlap {
                        which,
                        side,
                        at: key(b),
                    });
                }
            }
        }
        Ok(IdMap { ranges })
    }

    /// Parses a map as `/proc/PID/uid_map` shows it (`inside outside
    /// count` per line), checked as [`IdMap::new`] checks a spec's.
    pub fn parse_proc(which: &'static str, text: &str) -> Result<IdMap, IdMapError> {
        let mut ranges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || IdMapError::Malformed { which, line: i + 1 };
            let mut words = line.split_whitespace().map(str::parse::<u32>);
            let mut next = || words.next().and_then(Result::ok).ok_or_else(bad);
            let (container, host, size) = (next()?, next()?, next()?);
            if words.next().is_some() {
                return Err(bad());
            }
            ranges.push(IdRange {
                container,
                host,
                size,
            });
            if ranges.len() > MAX_RANGES {
                return Err(IdMapError::TooMany {
                    which,
                    count: ranges.len(),
                });
            }
        }
        IdMap::new(which, ranges)
    }

    /// The map as `/proc/PID/uid_map` takes it (one `inside outside count`
    /// line per range).
    pub fn proc_text(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
            .collect()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// Whether this is the identity (no mapping).
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The host id of container id `id`; `None` when it is not mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(id);
        }
        self.ranges.iter().find_map(|r| {
            let offset = id.checked_sub(r.container).filter(|o| *o < r.size)?;
            r.host.checked_add(offset)
        })
    }

    /// Whether host id `id` has a container id.
    pub fn maps_host(&self, id: u32) -> bool {
        self.ranges.is_empty()
            || self
                .ranges
                .iter()
                .any(|r| id.checked_sub(r.host).is_some_and(|o| o < r.size))
    }

    /// The container id of host id `id`; [`OVERFLOW_ID`] when it is not
    /// mapped.
    pub fn to_container(&self, id: u32) -> u32 {
        if self.ranges.is_empty() {
            return id;
        }
        self.ranges
            .iter()
            .find_map(|r| {
                let offset = id.checked_sub(r.host).filter(|o| *o < r.size)?;
                r.container.checked_add(offset)
            })
            .unwrap_or(OVERFLOW_ID)
    }
}

/// The uid and gid maps of a container's shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uid: IdMap,
    pub gid: IdMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_maps_parse_round_trip_and_refuse_junk() {
        let text = "         0       1000       2000\n      5000     100000         10\n";
        let m = IdMap::parse_proc("uid_map", text).unwrap();
        assert_eq!(m.ranges(), &[r(0, 1000, 2000), r(5000, 100_000, 10)]);
        assert_eq!(IdMap::parse_proc("uid_map", &m.proc_text()).unwrap(), m);
        assert_eq!(m.proc_text(), "0 1000 2000\n5000 100000 10\n");
        // The host's own map, and an empty one (no map yet).
        let host = IdMap::parse_proc("uid_map", "0 0 4294967295\n").unwrap();
        assert_eq!(host.to_host(7), Some(7));
        assert!(IdMap::parse_proc("uid_map", "").unwrap().is_identity());
        for junk in [
            "0 1000\n",
            "0 1000 2000 7\n",
            "a b c\n",
            "-1 0 1\n",
            "0 0 4294967296\n",
        ] {
            let e = IdMap::parse_proc("uid_map", junk).unwrap_err();
            assert!(
                matches!(e, IdMapError::Malformed { line: 1, .. }),
                "{junk:?}: {e}"
            );
        }
        assert!(matches!(
            IdMap::parse_proc("uid_map", "0 0 1\n0 5 1\n").unwrap_err(),
            IdMapError::Overlap { .. }
        ));
        assert!(matches!(
            IdMap::parse_proc("uid_map", "0 0 0\n").unwrap_err(),
            IdMapError::Empty { .. }
        ));
        let many: String = (0..400).map(|i| format!("{i} {i} 1\n")).collect();
        assert!(matches!(
            IdMap::parse_proc("uid_map", &many).unwrap_err(),
            IdMapError::TooMany { .. }
        ));
    }

    fn r(container: u32, host: u32, size: u32) -> IdRange {
        IdRange {
            container,
            host,
            size,
        }
    }

    #[test]
    fn ids_map_both_ways_and_the_rest_is_overflow_or_none() {
        let m = IdMap::new("uid", vec![r(0, 100_000, 65536), r(70_000, 5000, 10)]).unwrap();
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(65535), Some(165_535));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_host(70_009), Some(5009));
        assert_eq!(m.to_host(70_010), None);
        assert_eq!(m.to_container(100_000), 0);
        assert_eq!(m.to_container(5005), 70_005);
        assert_eq!(m.to_container(0), OVERFLOW_ID, "host root is nobody inside");
        assert_eq!(m.to_container(u32::MAX), OVERFLOW_ID);
        assert!(m.maps_host(165_535) && !m.maps_host(165_536) && !m.maps_host(0));
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!((id.to_host(7), id.to_container(7)), (Some(7), 7));
    }

    #[test]
    fn bad_maps_are_refused_naming_the_field() {
        let err = IdMap::new("linux.uidMappings", vec![r(0, 1000, 0)]).unwrap_err();
        assert!(err.to_string().contains("linux.uidMappings"), "{err}");
        assert!(matches!(
            IdMap::new("u", vec![r(u32::MAX, 0, 2)]),
            Err(IdMapError::Overflow { .. })
        ));
        assert!(matches!(
            IdMap::new("u", vec![r(0, u32::MAX, 2)]),
            Err(IdMapError::Overflow { .. })
        ));
        // The whole 32-bit space is fine.
        assert!(IdMap::new("u", vec![r(0, 0, u32::MAX), r(u32::MAX, u32::MAX, 1)]).is_ok());
        assert_eq!(
            IdMap::new("u", vec![r(0, 1000, 10), r(5, 2000, 10)]),
            Err(IdMapError::Overlap {
                which: "u",
                side: "container",
                at: 5
            })
        );
        assert_eq!(
            IdMap::new("u", vec![r(0, 1000, 10), r(50, 1009, 10)]),
            Err(IdMapError::Overlap {
                which: "u",
                side: "host",
                at: 1009
            })
        );
        let many = (0..=MAX_RANGES as u32).map(|i| r(i, i, 1)).collect();
        assert!(matches!(
            IdMap::new("u", many),
            Err(IdMapError::TooMany { .. })
        ));
    }
}
