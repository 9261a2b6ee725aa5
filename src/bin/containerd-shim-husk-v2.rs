//! `containerd-shim-husk-v2`: containerd's shim for the
//! `io.containerd.husk.v2` runtime (see `husk::shim`).

fn main() {
    husk::shim::main();
}
