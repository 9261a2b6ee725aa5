//! End to end, in the KVM test host: a husk container keeps the network its
//! engine gave it. Each test wires namespaces the way the CNI bridge plugin
//! does (a bridge with the gateway address in the test host's namespace, a
//! veth per namespace renamed `eth0` inside, an address, a default route),
//! names the namespace in `linux.namespaces`, and checks traffic both ways.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::oci::*;
use common::*;

/// Runs a shell command line, panicking with its output on failure.
fn sh(cmd: &str) -> String {
    let out = Command::new("bash").args(["-ec", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bridge `10.N.0.1/24` + `fdN::1/64` in the test host's namespace and
/// namespaces plugged into it. Everything is removed on drop.
struct Lan {
    tag: String,
    net: u8,
    bridge: String,
    namespaces: Vec<String>,
}

impl Lan {
    fn new(tag: &str, net: u8) -> Lan {
        let bridge = format!("hb{tag}");
        sh(&format!(
            "ip link add {bridge} type bridge
             ip addr add 10.{net}.0.1/24 dev {bridge}
             ip addr add fd{net}::1/64 dev {bridge} nodad
             ip link set {bridge} up"
        ));
        Lan {
            tag: tag.to_owned(),
            net,
            bridge,
            namespaces: Vec::new(),
        }
    }

    /// A namespace `10.N.0.HOST/24` with `eth0` of `mtu` bytes; returns its
    /// name (`/var/run/netns/NAME` is its path).
    fn add(&mut self, host: u8, mtu: u32) -> String {
        let ns = format!("hn{}{host}", self.tag);
        sh(&format!("ip netns add {ns}; ip -n {ns} link set lo up"));
        self.namespaces.push(ns.clone());
        self.plug(&ns, "eth0", host, mtu, true);
        ns
    }

    /// Adds interface `ifname` on this LAN to the existing namespace `ns`,
    /// at `10.N.0.HOST/24` (and the default routes through it if `gateway`).
    fn plug(&self, ns: &str, ifname: &str, host: u8, mtu: u32, gateway: bool) {
        let (tag, net, bridge) = (&self.tag, self.net, &self.bridge);
        let veth = format!("hv{tag}{host}");
        sh(&format!(
            "ip link add {veth} mtu {mtu} type veth peer name {veth}p mtu {mtu}
             ip link set {veth} master {bridge} up
             ip link set {veth}p netns {ns}
             ip -n {ns} link set {veth}p name {ifname}
             ip -n {ns} addr add 10.{net}.0.{host}/24 dev {ifname}
             ip -n {ns} addr add fd{net}::{host}/64 dev {ifname} nodad
             ip -n {ns} link set {ifname} up"
        ));
        if gateway {
            sh(&format!(
                "ip -n {ns} route add default via 10.{net}.0.1
                 ip -n {ns} -6 route add default via fd{net}::1"
            ));
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.net)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn netns_path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

/// A bundle running `args` in namespace `ns` (no namespace: a new one),
/// with ping's capability and `/www/index.html` saying `page`.
fn net_bundle(env: &Env, name: &str, args: &[&str], ns: Option<&str>, page: &str) -> PathBuf {
    let path = ns.map(netns_path);
    let bundle = env.bundle(name, args, |c| {
        let mut net = serde_json::json!({"type": "network"});
        if let Some(p) = &path {
            net["path"] = p.clone().into();
        }
        c["linux"]["namespaces"].as_array_mut().unwrap().push(net);
        let caps = ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL"];
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps
        });
    });
    let www = bundle.join("rootfs/www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), page).unwrap();
    bundle
}

/// A Python HTTP server serving `dir` on `addr:port` in namespace `ns`.
struct PeerServer(Child);

impl PeerServer {
    fn start(ns: &str, addr: &str, port: u16, dir: &Path) -> PeerServer {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-m", "http.server"])
            .arg(port.to_string())
            .args(["--bind", addr, "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PeerServer(child)
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Debian's busybox-static `wget -T` dies of SIGSEGV (on any host, not only
// in husk guests), so time-outs come from the `timeout` applet.

/// `husk exec ID sh -c CMD`, asserting success; returns stdout.
fn exec(env: &Env, id: &str, cmd: &str) -> String {
    let done = env.husk(&["exec", id, "sh", "-c", cmd]);
    assert!(done.status.success(), "exec {cmd}: {}", done.stderr);
    done.stdout
}

/// The namespace has no husk tap and no redirect left.
/// Whether container `id` (created, not yet deleted) was restored from a
/// template VM rather than booted, from its start-up timeline.
fn restored(env: &Env, id: &str) -> bool {
    std::fs::read_to_string(env.root().join(id).join("timeline"))
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().next() == Some("vmm.restored"))
}

fn assert_netns_clean(ns: &str) {
    let links = sh(&format!("ip -n {ns} -o link show"));
    assert!(!links.contains("husktap"), "tap left in {ns}:\n{links}");
    let qdiscs = sh(&format!("ip netns exec {ns} tc qdisc show"));
    assert!(
        !qdiscs.contains("ingress"),
        "tc ingress left in {ns}:\n{qdiscs}"
    );
}

#[test]
fn a_container_keeps_its_namespace_address_routes_and_dns() {
    let env = Env::new();
    let mut lan = Lan::new("a", 91);
    let ns = lan.add(2, 1400);
    let peer = lan.add(3, 1500);
    let link: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {ns} -j link show eth0"))).unwrap();
    let ns_mac = link[0]["address"].as_str().unwrap().to_owned();

    let resolv = env.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.91.0.1\nsearch husk.test\n").unwrap();
    let bundle = net_bundle(
        &env,
        "web",
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
        Some(&ns),
        "hello from husk\n",
    );
    // The engine's resolv.conf, bind-mounted as engines do.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/etc/resolv.conf", "type": "bind",
            "source": resolv, "options": ["rbind", "ro"]
        }));
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();

    // The test host knew the address on another MAC (a container before
    // this one): the guest's announcement corrects it without any traffic
    // from here.
    let bridge = &lan.bridge;
    sh(&format!(
        "ip neigh replace 10.91.0.2 lladdr 02:00:00:00:00:99 dev {bridge} nud stale"
    ));

    let done = env.husk(&["create", "--bundle", b(&bundle), "web"]);
    assert!(done.status.success(), "{}", done.stderr);
    // A VM with a NIC starts from a template VM like any other.
    assert!(restored(&env, "web"), "booted cold");
    // Redirects are in place while the container lives.
    let qdiscs = sh(&format!(
        "ip netns exec {ns} tc filter show dev eth0 ingress"
    ));
    assert!(qdiscs.contains("husktap0"), "{qdiscs}");
    assert!(env.husk(&["start", "web"]).status.success());
    let mut neigh = String::new();
    for _ in 0..100 {
        neigh = sh(&format!("ip neigh show 10.91.0.2 dev {bridge}"));
        if neigh.contains(&ns_mac) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        neigh.contains(&ns_mac),
        "not announced as {ns_mac}: {neigh}"
    );

    // From the test host and from another namespace, at the engine's address.
    let url = format!("http://{}:8080/", lan.ip(2));
    assert_eq!(fetch(None, &url), "hello from husk\n");
    assert_eq!(fetch(Some(&peer), &url), "hello from husk\n");

    // The guest has the namespace's address, MAC, MTU, routes and DNS.
    let addrs = exec(&env, "web", "ip -o addr show eth0");
    assert!(addrs.contains("inet 10.91.0.2/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd91::2/64"), "{addrs}");
    let link = exec(&env, "web", "ip -o link show eth0");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(
        link.contains(&ns_mac),
        "guest MAC differs from {ns_mac}: {link}"
    );
    let routes = exec(&env, "web", "ip route; ip -6 route");
    assert!(
        routes.contains("default via 10.91.0.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("default via fd91::1 dev eth0"), "{routes}");
    let dns = exec(&env, "web", "cat /etc/resolv.conf");
    assert!(dns.contains("nameserver 10.91.0.1"), "{dns}");

    // The container reaches a server in another namespace, and pings both ways.
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("peer.txt"), "from the peer\n").unwrap();
    let _server = PeerServer::start(&peer, &lan.ip(3), 8000, files.path());
    let got = exec(
        &env,
        "web",
        "for i in $(seq 1 60); do timeout 5 wget -q -O - http://10.91.0.3:8000/peer.txt && exit 0; sleep 1; done; exit 1",
    );
    assert_eq!(got, "from the peer\n");
    exec(
        &env,
        "web",
        "ping -c 1 -W 5 10.91.0.1 && ping -c 1 -W 5 10.91.0.3",
    );
    sh(&format!("{BUSYBOX} ping -c 1 -W 5 {}", lan.ip(2)));
    sh(&format!(
        "ip netns exec {peer} {BUSYBOX} ping -c 1 -W 5 {}",
        lan.ip(2)
    ));

    assert!(env.husk(&["kill", "web", "KILL"]).status.success());
    env.wait_status("web", "stopped");
    assert!(env.husk(&["delete", "web"]).status.success());
    env.assert_gone("web");
    assert_netns_clean(&ns);
}

#[test]
fn two_containers_in_two_namespaces_talk() {
    let env = Env::new();
    let mut lan = Lan::new("b", 92);
    let ns1 = lan.add(2, 1500);
    let ns2 = lan.add(3, 1500);
    let server = net_bundle(
        &env,
        "srv",
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
        Some(&ns1),
        "served by container one\n",
    );
    assert!(env
        .husk(&["run", "-d", "--bundle", b(&server), "srv"])
        .status
        .success());
    // The client runs with offloads off, the other path of the device.
    let client = env.bundle(
        "cli",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 90); do timeout 5 wget -q -O - http://10.92.0.2:8080/ && exit 0; sleep 1; done; exit 1",
        ],
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "network", "path": netns_path(&ns2)}));
            c["annotations"] = serde_json::json!({"io.husk.net.offload": "false"});
        },
    );
    let done = env.husk(&["run", "--bundle", b(&client), "cli"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "served by container one\n");
    env.assert_gone("cli");
    assert_netns_clean(&ns2);

    assert!(env.husk(&["delete", "--force", "srv"]).status.success());
    env.assert_gone("srv");
    assert_netns_clean(&ns1);
}

#[test]
fn each_interface_of_the_namespace_is_a_nic() {
    let env = Env::new();
    let mut front = Lan::new("c", 94);
    let back = Lan::new("d", 95);
    let ns = front.add(2, 1500);
    back.plug(&ns, "eth1", 2, 1400, false);
    let bundle = net_bundle(
        &env,
        "two",
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
        Some(&ns),
        "two nics\n",
    );
    assert!(env
        .husk(&["run", "-d", "--bundle", b(&bundle), "two"])
        .status
        .success());
    // Two NICs (MTUs 1500 and 1400): a template of that shape.
    assert!(restored(&env, "two"), "booted cold");
    assert_eq!(fetch(None, "http://10.94.0.2:8080/"), "two nics\n");
    assert_eq!(fetch(None, "http://10.95.0.2:8080/"), "two nics\n");
    let addrs = exec(&env, "two", "ip -o addr; ip -o link");
    let has = |ifname: &str, what: &str| {
        addrs
            .lines()
            .any(|l| l.contains(&format!(" {ifname}")) && l.contains(what))
    };
    assert!(has("eth0", "inet 10.94.0.2/24"), "{addrs}");
    assert!(has("eth1", "inet 10.95.0.2/24"), "{addrs}");
    assert!(has("eth1:", "mtu 1400"), "{addrs}");
    // Each NIC has its namespace interface's MAC, not the template's.
    for (ifname, lan) in [("eth0", &front), ("eth1", &back)] {
        let link: serde_json::Value =
            serde_json::from_str(&sh(&format!("ip -n {ns} -j link show {ifname}"))).unwrap();
        let mac = link[0]["address"].as_str().unwrap();
        assert!(
            has(&format!("{ifname}:"), mac),
            "{ifname} of {}: {addrs}",
            lan.bridge
        );
    }
    assert!(
        !addrs.contains("02:68:75:73"),
        "a placeholder MAC is left: {addrs}"
    );
    assert!(env.husk(&["delete", "--force", "two"]).status.success());
    env.assert_gone("two");
    assert_netns_clean(&ns);
}

#[test]
fn a_new_network_namespace_is_loopback_only() {
    let env = Env::new();
    let bundle = net_bundle(
        &env,
        "lo",
        &[
            "sh",
            "-c",
            "ip -o link; ip -o addr; httpd -p 127.0.0.1:8081 -h /www && wget -q -O - http://127.0.0.1:8081/",
        ],
        None,
        "loopback works\n",
    );
    let done = env.husk(&["run", "--bundle", b(&bundle), "lo"]);
    assert!(done.status.success(), "{}", done.stderr);
    let out = done.stdout;
    assert!(out.contains("inet 127.0.0.1/8"), "{out}");
    assert!(!out.contains("eth0"), "{out}");
    assert!(out.ends_with("loopback works\n"), "{out}");
    env.assert_gone("lo");
}

#[test]
fn a_bad_namespace_path_fails_clearly_and_leaves_nothing() {
    let env = Env::new();
    let missing = net_bundle(&env, "m", &["true"], Some("husk-no-such-ns"), "");
    let done = env.husk(&["create", "--bundle", b(&missing), "m"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("/var/run/netns/husk-no-such-ns"),
        "{}",
        done.stderr
    );
    env.assert_gone("m");

    let not_ns = env.dir.path().join("not-a-netns");
    std::fs::write(&not_ns, "").unwrap();
    let bundle = env.bundle("f", &["true"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "network", "path": not_ns}));
    });
    let done = env.husk(&["create", "--bundle", b(&bundle), "f"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("is not a network namespace"),
        "{}",
        done.stderr
    );
    env.assert_gone("f");

    // An interface already holding someone else's ingress qdisc: the
    // create fails naming it, the VM and taps go, the qdisc stays.
    let mut lan = Lan::new("e", 96);
    let ns = lan.add(2, 1500);
    sh(&format!("ip netns exec {ns} tc qdisc add dev eth0 ingress"));
    let busy = net_bundle(&env, "q", &["true"], Some(&ns), "");
    let done = env.husk(&["create", "--bundle", b(&busy), "q"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("tc qdisc add dev eth0 ingress"),
        "{}",
        done.stderr
    );
    env.assert_gone("q");
    let links = sh(&format!("ip -n {ns} -o link show"));
    assert!(!links.contains("husktap"), "tap left in {ns}:\n{links}");
    let qdiscs = sh(&format!("ip netns exec {ns} tc qdisc show dev eth0"));
    assert!(
        qdiscs.contains("ingress"),
        "the engine's qdisc was removed:\n{qdiscs}"
    );
}

/// Runs CNI plugin `plugin` (Debian's containernetworking-plugins) for
/// `command` on namespace `ns`, as an engine would; returns its result.
fn cni(plugin: &str, command: &str, ns: &str, conf: &serde_json::Value) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = Command::new(format!("/usr/lib/cni/{plugin}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", ns)
        .env("CNI_NETNS", netns_path(ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("/usr/lib/cni/{plugin} (containernetworking-plugins): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI {plugin} {command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// A namespace attached by the real CNI `bridge` (host-local IPAM) and
/// `portmap` plugins; detached (DEL, in reverse) and removed on drop.
struct CniNet {
    ns: String,
    bridge_conf: serde_json::Value,
    portmap_conf: serde_json::Value,
}

impl CniNet {
    /// Host port `host_port` maps to `container_port` of the namespace;
    /// `ipam` is host-local's store (shared by the namespaces of a test).
    fn add(ns: &str, ipam: &Path, host_port: u16, container_port: u16) -> (CniNet, String) {
        sh(&format!("ip netns add {ns}"));
        let bridge_conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "husk-e2e", "type": "bridge",
            "bridge": "hcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.97.0.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam}
        });
        let result = cni("bridge", "ADD", ns, &bridge_conf);
        let addr = result["ips"][0]["address"].as_str().unwrap().to_owned();
        let ip = addr.split('/').next().unwrap().to_owned();
        let portmap_conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "husk-e2e", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"}
            ]},
            "prevResult": result
        });
        cni("portmap", "ADD", ns, &portmap_conf);
        let net = CniNet {
            ns: ns.to_owned(),
            bridge_conf,
            portmap_conf,
        };
        (net, ip)
    }
}

impl Drop for CniNet {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            cni("portmap", "DEL", &self.ns, &self.portmap_conf);
            cni("bridge", "DEL", &self.ns, &self.bridge_conf);
        });
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The bridge CNI's `bridge` plugin makes (`hcni0`): deleted when dropped.
struct CniBridge;

impl Drop for CniBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "hcni0"]).status();
    }
}

#[test]
fn a_real_cni_network_with_a_port_mapping_reaches_the_container() {
    let env = Env::new();
    // CNI's bridge plugin leaves its bridge when the last namespace goes;
    // dropped after the namespaces (declared before them), before the census.
    let _bridge = CniBridge;
    let ipam = tempfile::tempdir().unwrap();
    let (net, ip) = CniNet::add("hncni1", ipam.path(), 18080, 8080);
    let (client, _) = CniNet::add("hncni2", ipam.path(), 18081, 8081);
    let bundle = net_bundle(
        &env,
        "cni",
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
        Some(&net.ns),
        "published\n",
    );
    assert!(env
        .husk(&["run", "-d", "--bundle", b(&bundle), "cni"])
        .status
        .success());
    // At the address CNI gave it, and through the published port: from
    // this host (OUTPUT DNAT) and from another CNI namespace (PREROUTING
    // DNAT, back through the bridge in hairpin mode).
    assert_eq!(fetch(None, &format!("http://{ip}:8080/")), "published\n");
    assert_eq!(fetch(None, "http://10.97.0.1:18080/"), "published\n");
    assert_eq!(
        fetch(Some(&client.ns), "http://10.97.0.1:18080/"),
        "published\n"
    );
    let routes = exec(&env, "cni", "ip route");
    assert!(
        routes.contains("default via 10.97.0.1 dev eth0"),
        "{routes}"
    );
    assert!(env.husk(&["delete", "--force", "cni"]).status.success());
    env.assert_gone("cni");
    assert_netns_clean(&net.ns);
}
