//! The 16550A UART at 0x3f8 (COM1, IRQ 4): the guest's console, through
//! `vm-superio`. Output goes to the configured sink and into a small tail
//! buffer the VMM quotes when a guest dies (a kernel panic message, say).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::bus::{lock, BusDevice};

/// Port base and size of COM1.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;
/// Bytes of console output kept for error messages.
pub const TAIL_BYTES: usize = 8192;
/// Console output a container's VMM writes to its log file, at most: a
/// guest can write to its serial port without end (a container sees the
/// guest's `/dev`), and the file is on the host, often a tmpfs in `/run`.
pub const CONSOLE_FILE_MAX: u64 = 4 << 20;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The last [`TAIL_BYTES`] bytes of console output.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = lock(&self.0);
        tail.extend(bytes);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
    }

    /// The kept output as text.
    pub fn text(&self) -> String {
        let tail = lock(&self.0);
        let (a, b) = tail.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The kernel's panic message, if the output has one.
    pub fn panic_message(&self) -> Option<String> {
        self.text()
            .lines()
            .rev()
            .find(|l| l.contains("Kernel panic - not syncing"))
            .map(|l| {
                l.split_once("Kernel panic")
                    .map(|(_, rest)| format!("Kernel panic{rest}"))
                    .unwrap_or_default()
                    .trim_end()
                    .to_owned()
            })
    }
}

/// The console sink plus the tail copy.
pub struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    tail: ConsoleTail,
    /// Bytes the sink takes before the rest is dropped ([`CONSOLE_FILE_MAX`]
    /// for a file), and how many it took.
    limit: Option<u64>,
    written: u64,
}

impl ConsoleWriter {
    pub fn new(sink: Option<Box<dyn Write + Send>>, tail: ConsoleTail) -> Self {
        ConsoleWriter {
            sink,
            tail,
            limit: None,
            written: 0,
        }
    }

    /// The sink takes `limit` bytes; after them a line says the rest was
    /// dropped (the tail still sees everything).
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.push(buf);
        if let Some(sink) = &mut self.sink {
            let room = self
                .limit
                .map_or(buf.len() as u64, |l| l.saturating_sub(self.written));
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
            let mut result = sink.write_all(&buf[..take]);
            self.written += take as u64;
            if take < buf.len() {
                if let Some(limit) = self.limit {
                    let note = format!("\n[husk: console output past {limit} bytes dropped]\n");
                    result = result.and_then(|()| sink.write_all(note.as_bytes()));
                    // The note once; then the sink is done.
                    self.sink = None;
                }
            }
            // A closed stdout must not stop the guest: drop the output.
            if result.is_err() {
                self.sink = None;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if let Some(sink) = &mut self.sink {
            let _ = sink.flush();
        }
        Ok(())
    }
}

/// COM1 on the port I/O bus.
pub struct Serial {
    uart: Uart<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl Serial {
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
        }
    }

    /// A UART with the registers of a snapshot.
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        irq: EventFd,
        out: ConsoleWriter,
    ) -> Result<Self, String> {
        Uart::from_state(state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map(|uart| Serial { uart })
            .map_err(|e| format!("serial state: {e:?}"))
    }

    /// The UART's registers.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.uart.state()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(off, *value) {
                log::warn!("serial: write at offset {off}: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// THR is offset 0; LSR (offset 5) reports the transmitter empty.
    #[test]
    fn bytes_written_to_thr_reach_the_sink_and_the_tail() {
        let shared = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let tail = ConsoleTail::default();
        let mut s = Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ConsoleWriter::new(Some(Box::new(Shared(shared.clone()))), tail.clone()),
        );
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*lock(&shared), b"hi\n");
        assert_eq!(tail.text(), "hi\n");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }

    #[test]
    fn a_console_file_stops_at_its_limit_with_a_note() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let tail = ConsoleTail::default();
        let mut w =
            ConsoleWriter::new(Some(Box::new(file.reopen().unwrap())), tail.clone()).with_limit(10);
        w.write_all(b"12345678").unwrap();
        w.write_all(b"abcd").unwrap();
        // A guest that goes on writing changes nothing more on the host.
        for _ in 0..1000 {
            w.write_all(b"flood").unwrap();
        }
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(
            text,
            "12345678ab\n[husk: console output past 10 bytes dropped]\n"
        );
        // The tail still has the latest output, for error messages.
        assert!(tail.text().ends_with("floodflood"));
    }

    #[test]
    fn the_tail_keeps_the_end_and_finds_a_panic() {
        let tail = ConsoleTail::default();
        tail.push(&vec![b'x'; TAIL_BYTES]);
        tail.push(b"\n[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n");
        assert!(tail.text().len() <= TAIL_BYTES);
        assert_eq!(
            tail.panic_message().as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
        assert_eq!(ConsoleTail::default().panic_message(), None);
    }
}
