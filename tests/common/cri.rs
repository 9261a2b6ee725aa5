#![allow(dead_code)]

//! A containerd of a test's (or benchmark's) own with its CRI plugin on,
//! and a CRI client (gRPC on containerd's CRI socket, the `k8s-cri`
//! protobufs): what `tests/e2e_cri.rs` and `benches/pod.rs` drive pods with.
//!
//! containerd runs with a configuration of its own: state on a tmpfs, the
//! native snapshotter, a CNI bridge of the test host's own, the test image
//! as the sandbox ("pause") image, and two runtime handlers: `runc` and
//! `husk` (containerd-shim-husk-v2).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The test image (busybox), also the pods' sandbox image.
pub const IMAGE: &str = "localhost/husk-cri:latest";
/// The sandbox image's command: waits for a signal, as `pause` does.
pub const PAUSE_CMD: &str =
    r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait $!; done"]"#;
/// containerd's namespace for Kubernetes.
pub const NAMESPACE: &str = "k8s.io";
/// The pods' CNI bridge and subnet (inside the test host only).
pub const CNI_CONFIG: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "husk-cri-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "husk-cri0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.89.7.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
"#;
/// The cgroup containerd's CRI puts pods under when the pod names none.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/k8s.io";
/// The CNI bridge of [`CNI_CONFIG`].
pub const CNI_BRIDGE: &str = "husk-cri0";
/// How long one CRI call may take (a pod start boots a VM under TCG).
pub const CALL_LIMIT: Duration = Duration::from_secs(180);

/// A containerd daemon of this test's own with the CRI plugin on.
pub struct Containerd {
    /// First: it checks for leaks after the teardown, before the directory goes.
    _census: census::Census,
    pub dir: tempfile::TempDir,
    daemon: Child,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Containerd {
    pub fn start() -> Containerd {
        let census = require_kvm();
        let dir = engines::tmpfs_workdir();
        let d = dir.path();
        std::fs::create_dir(d.join("cni")).unwrap();
        std::fs::write(d.join("cni/10-husk-cri-e2e.conflist"), CNI_CONFIG).unwrap();
        let config = format!(
            r#"version = 2
root = "{0}/root"
state = "{0}/state"
[grpc]
  address = "{0}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{0}/cni"
"#,
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(shim_binary(), bin.join("containerd-shim-husk-v2")).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HUSK_SHIM_ROOT", d.join("husk-shim"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package)");
        let sock = d.join("containerd.sock");
        engines::wait_for_socket(&sock, "containerd");
        // Several test threads call at once (pods started in parallel).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(connect(sock));
        let c = Containerd {
            _census: census,
            dir,
            daemon,
            rt,
            client,
        };
        c.import_image();
        c
    }

    /// busybox rootfs -> podman import (with the pause command) -> OCI
    /// archive -> `ctr -n k8s.io image import`.
    pub fn import_image(&self) {
        let d = self.dir.path();
        let archive = engines::oci_archive(d, IMAGE, "served through the CRI\n", &[PAUSE_CMD]);
        let out = Command::new("ctr")
            .arg("--address")
            .arg(d.join("containerd.sock"))
            .args([
                "-n",
                NAMESPACE,
                "image",
                "import",
                "--snapshotter",
                "native",
            ])
            .arg(&archive)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one CRI call, bounded.
    pub fn call<F, T>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, f(client)).await })
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => panic!("CRI {what}: {:?}: {}", status.code(), status.message()),
            Err(_) => panic!("CRI {what}: no answer within {CALL_LIMIT:?}"),
        }
    }

    /// Like [`Self::call`], but returns the error status instead of failing.
    pub fn try_call<F, T>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, f(client)).await })
        {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => panic!("CRI {what}: no answer within {CALL_LIMIT:?}"),
        }
    }

    /// A pod's configuration: `name`, logs under this test's directory.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let logs = self.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// `RunPodSandbox` with `handler`; the pod's id.
    pub fn run_pod(&self, config: &cri::PodSandboxConfig, handler: &str) -> String {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(req).await
        })
        .pod_sandbox_id
    }

    /// `CreateContainer` of `name` running `command` in pod `pod`, with a
    /// pid namespace of its own (the kubelet's default); its id.
    pub fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        command: &[&str],
        mounts: Vec<cri::Mount>,
    ) -> String {
        self.create_with_pid(
            pod,
            pod_config,
            name,
            command,
            mounts,
            cri::NamespaceMode::Container,
        )
    }

    /// [`Self::create`] with the pid namespace `pid` (`Pod`: the pod's,
    /// as with `shareProcessNamespace`).
    pub fn create_with_pid(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        command: &[&str],
        mounts: Vec<cri::Mount>,
        pid: cri::NamespaceMode,
    ) -> String {
        self.create_with(pod, pod_config, name, command, mounts, pid, None)
    }

    /// [`Self::create_with_pid`] with `resources`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_with(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        command: &[&str],
        mounts: Vec<cri::Mount>,
        pid: cri::NamespaceMode,
        resources: Option<cri::LinuxContainerResources>,
    ) -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            mounts,
            linux: Some(cri::LinuxContainerConfig {
                resources,
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: pid as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call("CreateContainer", |mut c| async move {
            c.create_container(req).await
        })
        .container_id
    }

    pub fn start_container(&self, id: &str) {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", |mut c| async move {
            c.start_container(req).await
        });
    }

    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(req).await
        })
        .status
        .expect("a container status")
    }

    /// Waits until container `id` has exited; its status.
    pub fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let start = Instant::now();
        loop {
            let s = self.container_status(id);
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                start.elapsed() < CALL_LIMIT,
                "container {id} did not exit: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `ExecSync`: (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> (i32, String, String) {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let r = self.call("ExecSync", |mut c| async move { c.exec_sync(req).await });
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    pub fn stop_container(&self, id: &str, timeout: i64) {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        });
    }

    pub fn remove_container(&self, id: &str) {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        });
    }

    /// `StopPodSandbox` then `RemovePodSandbox` (`crictl rmp -f`).
    pub fn remove_pod(&self, pod: &str) {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(req).await
        });
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        });
    }

    /// The lines container `name` of pod `pod_name` logged, without the CRI
    /// log format's timestamp, stream and tag.
    pub fn log_lines(&self, pod_name: &str, name: &str) -> Vec<String> {
        let path = self
            .dir
            .path()
            .join("pods")
            .join(pod_name)
            .join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
            .collect()
    }

    /// `ctr -n k8s.io ARGS`: its stdout (it must succeed).
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// husk VMMs running now.
    pub fn vmms(&self) -> Vec<String> {
        engines::processes(|l| l.starts_with(&*husk().to_string_lossy()) && l.contains(" vmm "))
    }

    /// Nothing of husk's shim is left: no VMM, no shim, no container state,
    /// no mount under containerd's or husk's state.
    pub fn assert_nothing_left(&self) {
        engines::assert_no_vmm(|l| l.starts_with(&*husk().to_string_lossy()));
        engines::assert_no_husk_shim();
        let state = self.dir.path().join("husk-shim").join(NAMESPACE);
        let left = engines::state_entries(&state);
        assert!(left.is_empty(), "container state left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let d = self.dir.path().to_string_lossy().into_owned();
        let leaked: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&format!("{d}/")))
            .collect();
        assert!(leaked.is_empty(), "mounts left: {leaked:?}");
    }

    pub fn dump_logs(&self) {
        let tail = |path: &std::path::Path| engines::log_tail(path, 60);
        let d = self.dir.path();
        eprintln!("--- containerd.log\n{}", tail(&d.join("containerd.log")));
        let state = d.join("husk-shim").join(NAMESPACE);
        for entry in std::fs::read_dir(state).into_iter().flatten().flatten() {
            let log = entry.path().join("vmm.log");
            eprintln!("--- {}\n{}", log.display(), tail(&log));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // CRI's network namespaces and the pods' shm mounts live under the
        // state directory; a failed test may leave some.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        // What this test's containerd and CNI made outside it: the pods'
        // parent cgroup (CRI's default, `k8s.io`; each container's own
        // cgroup in it is the runtime's to remove, which the census checks)
        // and the CNI bridge.
        let _ = std::fs::remove_dir(CGROUP_PARENT);
        let _ = Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .stderr(Stdio::null())
            .status();
    }
}

/// A CRI client on containerd's socket.
pub async fn connect(sock: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(sock).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connecting to containerd's CRI socket");
    RuntimeServiceClient::new(channel)
}

pub fn husk() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_husk"))
}

pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
}

/// A directory mount of the host into a container.
pub fn mount(host: &Path, container: &str) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

/// Prints a process's ipc and pid namespaces, one a line.
pub const NS_CMD: &[&str] = &[
    "sh",
    "-c",
    "readlink /proc/self/ns/ipc; readlink /proc/self/ns/pid",
];

/// The pod's VMMs: those whose command line names one of `ids`.
pub fn pod_vmms(c: &Containerd, ids: &[&str]) -> Vec<String> {
    c.vmms()
        .into_iter()
        .filter(|l| ids.iter().any(|id| l.contains(id)))
        .collect()
}
