//! The tc plumbing between a namespace interface and its tap: an `ingress`
//! qdisc on each with a `matchall` filter whose `mirred egress redirect`
//! action hands every frame to the other (what Kata calls the tcfilter
//! model). The namespace's own IP stack never sees the frames; the guest
//! answers for the interface's addresses.
//!
//! Runs iproute2's `tc` in the calling thread's network namespace.

use super::{run_tool, NetError};

/// The ingress qdisc's handle.
const INGRESS_PARENT: &str = "ffff:";
/// Cookie on husk's mirred actions ("husk" in hex): it tells husk's
/// redirects from anyone else's, also once the tap (and with it the
/// redirect's target name) is gone.
const COOKIE: &str = "6875736b";

/// Redirects everything arriving on `from` to `to`.
fn redirect_one(from: &str, to: &str) -> Result<(), NetError> {
    run_tool("tc", &["qdisc", "add", "dev", from, "ingress"])?;
    run_tool(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            from,
            "parent",
            INGRESS_PARENT,
            "protocol",
            "all",
            "matchall",
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            to,
            "cookie",
            COOKIE,
        ],
    )?;
    Ok(())
}

/// Connects `ifname` and `tap` both ways. On failure, what was added is
/// removed again; an ingress qdisc someone else put on `ifname` is refused
/// and left alone.
pub fn connect(ifname: &str, tap: &str) -> Result<(), NetError> {
    let result = redirect_one(ifname, tap).and_then(|()| redirect_one(tap, ifname));
    if let Err(e) = result {
        let _ = disconnect(ifname);
        return Err(e);
    }
    Ok(())
}

/// Removes husk's redirect from `ifname`: its ingress qdisc, if the
/// filters there redirect to a husk tap (anyone else's ingress qdisc stays).
/// `Ok(false)` when there was none or the interface is gone.
pub fn disconnect(ifname: &str) -> Result<bool, NetError> {
    let filters = match run_tool(
        "tc",
        &["filter", "show", "dev", ifname, "parent", INGRESS_PARENT],
    ) {
        Ok(out) => out,
        Err(NetError::Command { stderr, .. }) if is_absent(&stderr) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !is_ours(&filters) {
        return Ok(false);
    }
    match run_tool("tc", &["qdisc", "del", "dev", ifname, "ingress"]) {
        Ok(_) => Ok(true),
        Err(NetError::Command { stderr, .. }) if is_absent(&stderr) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `tc filter show` output holds husk's redirect.
fn is_ours(filters: &str) -> bool {
    filters.contains("mirred")
        && filters
            .lines()
            .any(|l| l.trim() == format!("cookie {COOKIE}"))
}

/// Whether `tc`'s complaint means there was nothing to remove.
fn is_absent(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("cannot find device")
        || s.contains("no such file")
        || s.contains("invalid handle")
        || s.contains("cannot delete qdisc with handle of zero")
        || s.contains("no such device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_husks_redirects_are_removed() {
        // `tc filter show dev eth0 parent ffff:` (iproute2 6.1).
        let ours = "filter protocol all pref 49152 matchall chain 0 \n\
                    filter protocol all pref 49152 matchall chain 0 handle 0x1 \n  not_in_hw\n\
                    \taction order 1: mirred (Egress Redirect to device *) stolen\n\
                    \tindex 1 ref 1 bind 1\n\
                    \tcookie 6875736b\n";
        assert!(is_ours(ours));
        let theirs = ours.replace("\tcookie 6875736b\n", "");
        assert!(!is_ours(&theirs));
        assert!(!is_ours(""));
    }

    #[test]
    fn absence_is_told_from_failure() {
        assert!(is_absent("Cannot find device \"eth7\"\n"));
        assert!(is_absent(
            "Error: Cannot delete qdisc with handle of zero.\n"
        ));
        assert!(is_absent("RTNETLINK answers: No such file or directory\n"));
        assert!(!is_absent("RTNETLINK answers: Operation not permitted\n"));
    }
}
