//! The boot timer port ([`crate::proto::BOOT_TIMER_PORT`]): husk-init writes
//! a [`BootEvent`] byte at moments of its start and the VMM records when it
//! arrived in the container's start-up timeline ([`crate::timeline`]).

use std::path::PathBuf;

use crate::proto::{BootEvent, BOOT_TIMER_PORT};
use crate::vmm::bus::BusDevice;

pub const BOOT_TIMER_BASE: u64 = BOOT_TIMER_PORT as u64;
pub const BOOT_TIMER_LEN: u64 = 1;

/// How many events a guest may record: husk-init sends a handful per boot;
/// a guest that writes the port without end does not grow the file.
pub const MAX_BOOT_EVENTS: usize = 64;

pub struct BootTimer {
    /// The container's timeline, opened once (none: the moments are only
    /// logged).
    timeline: Option<crate::timeline::Timeline>,
    /// Events recorded so far ([`MAX_BOOT_EVENTS`]).
    recorded: usize,
    started_ns: u64,
    /// Written when the agent reports it listens (a VM that is to be
    /// snapshotted then).
    on_agent: Option<vmm_sys_util::eventfd::EventFd>,
}

impl BootTimer {
    /// A timer recording into the timeline of the state directory
    /// `timeline` (opened now; one that cannot be opened is only logged).
    pub fn new(timeline: Option<PathBuf>) -> Self {
        let timeline = timeline.and_then(|dir| {
            crate::timeline::Timeline::open(&dir)
                .map_err(|e| log::warn!("boot timer: timeline in {}: {e}", dir.display()))
                .ok()
        });
        BootTimer {
            timeline,
            recorded: 0,
            started_ns: crate::timeline::now_ns(),
            on_agent: None,
        }
    }

    /// Also signals `evt` at [`BootEvent::AgentListening`].
    pub fn signal_agent(mut self, evt: vmm_sys_util::eventfd::EventFd) -> Self {
        self.on_agent = Some(evt);
        self
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = crate::timeline::now_ns();
        let (0, [byte]) = (offset, data) else {
            log::warn!(
                "boot timer: ignoring a {}-byte write at offset {offset}",
                data.len()
            );
            return;
        };
        let Some(event) = BootEvent::from_u8(*byte) else {
            log::warn!("boot timer: unknown event {byte}");
            return;
        };
        log::debug!(
            "boot timer: {} at {:.1} ms",
            event.name(),
            now.saturating_sub(self.started_ns) as f64 / 1e6
        );
        if let Some(timeline) = &self.timeline {
            if self.recorded < MAX_BOOT_EVENTS {
                self.recorded += 1;
                timeline.mark_at(event.name(), now);
            } else if self.recorded == MAX_BOOT_EVENTS {
                self.recorded += 1;
                log::warn!(
                    "boot timer: the guest sent more than {MAX_BOOT_EVENTS} events; \
                     no more are recorded"
                );
            }
        }
        if let (BootEvent::AgentListening, Some(evt)) = (event, &self.on_agent) {
            if let Err(e) = evt.write(1) {
                log::error!("boot timer: signalling the agent event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_events_land_in_the_timeline_and_junk_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = BootTimer::new(Some(dir.path().to_path_buf()));
        t.write(0, &[BootEvent::InitStarted as u8]);
        t.write(0, &[99]);
        t.write(0, &[1, 2]);
        t.write(1, &[1]);
        t.write(0, &[BootEvent::HolderStarted as u8]);
        t.write(0, &[BootEvent::ContainerSetUp as u8]);
        t.write(0, &[BootEvent::ProcessExecuted as u8]);
        t.write(0, &[6]);
        let names: Vec<String> = crate::timeline::read(dir.path())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            ["guest.init", "guest.holder", "guest.setup", "guest.exec"]
        );
        let mut data = [7u8];
        t.read(0, &mut data);
        assert_eq!(data, [0]);
        // The agent event can wake a snapshot.
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = BootTimer::new(None).signal_agent(evt.try_clone().unwrap());
        t.write(0, &[BootEvent::InitStarted as u8]);
        assert!(evt.read().is_err(), "only the agent event signals");
        t.write(0, &[BootEvent::AgentListening as u8]);
        assert_eq!(evt.read().unwrap(), 1);
        // Without a timeline the events are only logged.
        BootTimer::new(None).write(0, &[1]);
    }

    #[test]
    fn a_guest_that_writes_the_port_forever_records_a_bounded_number_of_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = BootTimer::new(Some(dir.path().to_path_buf()));
        for _ in 0..10 * MAX_BOOT_EVENTS {
            t.write(0, &[BootEvent::InitStarted as u8]);
        }
        assert_eq!(crate::timeline::read(dir.path()).len(), MAX_BOOT_EVENTS);
    }
}
