//! The container runtime: bundles, the lifecycle record, VM sizing, and
//! what the runc-compatible verbs print.
//!
//! * [`bundle`]: load and check `config.json` (oci-spec) and the id;
//! * [`state`]: [`state::Status`] with its `can_*` predicates and the
//!   `state.json` record under `--root`;
//! * [`vm_spec`]: OCI resources and annotations -> guest memory and vCPUs;
//! * [`output`]: `state` and `list` output as runc prints it;
//! * [`features`], [`spec`]: `husk features` and `husk spec`;
//! * [`container`]: the verbs themselves; its [`container::ContainerError`]
//!   is where every module's error rolls up;
//! * [`guest_spec`], [`vm_plan`], [`vmm_process`]: from config.json to the
//!   VMM process that is the container;
//! * [`keeper`]: removes a container's cgroup when its VMM ends with its
//!   record gone.

pub mod bundle;
pub mod cgroup;
pub mod checkpoint;
pub mod container;
pub mod features;
pub mod fs_server;
pub mod guest_spec;
pub mod hooks;
pub mod keeper;
pub mod output;
pub mod pod;
pub mod process;
pub mod spec;
pub mod state;
pub mod template;
pub mod vm_plan;
pub mod vm_spec;
pub mod vmm_process;

pub use bundle::{Bundle, BundleError};
pub use spec::SpecError;
pub use state::{ExitStatus, Operation, State, StateError, Status};
pub use vm_spec::{vm_sizing, VmSizing, VmSpecError};
