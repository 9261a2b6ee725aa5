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
        ],
    )?;
    Ok(())
}

/// Connects `ifname` and `tap` both ways. On failure, what was added is
/// removed again.
pub fn connect(ifname: &str, tap: &str) -> Result<(), NetError> {
    let result = redirect_one(ifname, tap).and_then(|()| redirect_one(tap, ifname));
    if result.is_err() {
        let _ = disconnect(ifname);
        let _ = disconnect(tap);
    }
    result
}

/// Removes the ingress qdisc (and with it the redirect filter) from
/// `ifname`. `Ok(false)` when there was none or the interface is gone.
pub fn disconnect(ifname: &str) -> Result<bool, NetError> {
    match run_tool("tc", &["qdisc", "del", "dev", ifname, "ingress"]) {
        Ok(_) => Ok(true),
        Err(NetError::Command { stderr, .. }) if is_absent(&stderr) => Ok(false),
        Err(e) => Err(e),
    }
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
    fn absence_is_told_from_failure() {
        assert!(is_absent("Cannot find device \"eth7\"\n"));
        assert!(is_absent(
            "Error: Cannot delete qdisc with handle of zero.\n"
        ));
        assert!(is_absent("RTNETLINK answers: No such file or directory\n"));
        assert!(!is_absent("RTNETLINK answers: Operation not permitted\n"));
    }
}
