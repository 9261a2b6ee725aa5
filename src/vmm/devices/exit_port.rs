//! The port husk-init writes the command's ending to (see
//! [`crate::proto::EXIT_PORT`]): the VMM stops with that ending.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::proto::{Ending, EXIT_PORT};
use crate::vmm::bus::{lock, BusDevice};

pub const EXIT_PORT_BASE: u64 = EXIT_PORT as u64;
pub const EXIT_PORT_LEN: u64 = 4;

/// The ending reported by the guest, shared with the VMM's event loop.
pub type Reported = Arc<Mutex<Option<Ending>>>;

pub struct ExitPort {
    reported: Reported,
    exit: EventFd,
}

impl ExitPort {
    pub fn new(reported: Reported, exit: EventFd) -> Self {
        ExitPort { reported, exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!("exit port: ignoring a {}-byte write", data.len());
            return;
        };
        if offset != 0 {
            log::warn!("exit port: ignoring a write at offset {offset}");
            return;
        }
        match Ending::from_port_value(u32::from_le_bytes(bytes)) {
            Some(ending) => {
                *lock(&self.reported) = Some(ending);
                if let Err(e) = self.exit.write(1) {
                    log::error!("exit port: signalling exit: {e}");
                }
            }
            None => log::warn!("exit port: unknown value {:#x}", u32::from_le_bytes(bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_report_is_recorded_and_signalled() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reported = Reported::default();
        let mut port = ExitPort::new(reported.clone(), evt.try_clone().unwrap());
        port.write(0, &[3]);
        port.write(0, &0x0700u32.to_le_bytes());
        assert!(evt.read().is_err());
        assert_eq!(*lock(&reported), None);
        port.write(0, &Ending::Signaled(9).to_port_value().to_le_bytes());
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(*lock(&reported), Some(Ending::Signaled(9)));
    }
}
