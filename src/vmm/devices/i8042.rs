//! Just enough of the i8042 keyboard controller for the guest to reboot:
//! Linux (`reboot=k`) waits for the input buffer to be empty, then writes the
//! pulse-reset command 0xfe to the command port. The VMM treats that as the
//! end of the VM.

use vmm_sys_util::eventfd::EventFd;

use crate::vmm::bus::BusDevice;

/// Ports 0x60 (data) ..= 0x64 (status/command); 0x61 is the PIT's speaker
/// port, emulated by KVM's in-kernel PIT.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
/// Offset of the command/status port from the base.
const COMMAND_OFFSET: u64 = 4;
/// Controller command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    reset: EventFd,
}

impl I8042 {
    /// `reset` is written when the guest asks for a reset.
    pub fn new(reset: EventFd) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty. Data: nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset.write(1) {
                log::error!("i8042: signalling reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
