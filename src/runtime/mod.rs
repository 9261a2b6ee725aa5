//! The container runtime: bundles, the lifecycle record, VM sizing, and
//! what the runc-compatible verbs print.
//!
//! * [`bundle`]: load and check `config.json` (oci-spec) and the id;
//! * [`state`]: [`state::Status`] with its `can_*` predicates and the
//!   `state.json` record under `--root`;
//! * [`vm_spec`]: OCI resources and annotations -> guest memory and vCPUs;
//! * [`output`]: `state` and `list` output as runc prints it;
//! * [`features`], [`spec`]: `husk features` and `husk spec`.

pub mod bundle;
pub mod container;
pub mod features;
pub mod guest_spec;
pub mod output;
pub mod spec;
pub mod state;
pub mod vm_plan;
pub mod vm_spec;
pub mod vmm_process;

pub use bundle::{Bundle, BundleError};
pub use spec::SpecError;
pub use state::{ExitStatus, Operation, State, StateError, Status};
pub use vm_spec::{vm_sizing, VmSizing, VmSpecError};

/// Any runtime error; each module's enum rolls up here.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    VmSpec(#[from] VmSpecError),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_roll_up_with_their_messages() {
        let e: RuntimeError = StateError::NotFound { id: "x".into() }.into();
        assert_eq!(e.to_string(), "container does not exist");
        let e: RuntimeError = BundleError::NoProcess.into();
        assert_eq!(e.to_string(), "process property must not be empty");
        assert!(matches!(e, RuntimeError::Bundle(_)));
    }
}
