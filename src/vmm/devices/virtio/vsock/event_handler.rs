//! The vsock device as an event-manager subscriber (see the module docs of
//! [`super`] for the order of events).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Vsock;
use crate::vmm::devices::virtio::VirtioDevice;

impl Vsock {
    /// Starts watching the queue events (once: they stay registered across
    /// resets, and events while inactive are drained and ignored).
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_events_registered {
            return;
        }
        for evt in &self.queue_events {
            if let Err(err) = ops.add(Events::new(evt, EventSet::IN)) {
                error!(
                    "vsock {}: registering a queue event: {err:?}",
                    self.uds_path().display()
                );
                return;
            }
        }
        self.queue_events_registered = true;
    }

    fn handle_activate_event(&mut self, ops: &mut EventOps) {
        if let Err(err) = self.activate_evt.read() {
            if err.kind() != std::io::ErrorKind::WouldBlock {
                warn!(
                    "vsock {}: reading the activate event: {err}",
                    self.uds_path().display()
                );
            }
        }
        // Also written by reset, when there are no queues to watch yet.
        if self.is_activated() {
            self.register_queue_events(ops);
        }
    }

    fn handle_queue_event(&mut self, index: usize) {
        if let Err(err) = self.queue_events[index].read() {
            // EAGAIN: spurious wakeup, nothing to drain.
            if err.kind() != std::io::ErrorKind::WouldBlock {
                warn!(
                    "vsock {}: reading queue {index}'s event: {err}",
                    self.uds_path().display()
                );
            }
        }
        // rx: new buffers, tx: new packets; both queues are looked at after
        // every event anyway. The event queue is never used (the device
        // has no events to send).
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let path = self.uds_path().display().to_string();
        if let Err(err) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            error!("vsock {path}: registering the activate event: {err:?}");
        }
        if let Err(err) = ops.add(Events::new(&self.muxer.listener, EventSet::IN)) {
            error!("vsock {path}: registering the listening socket: {err:?}");
        }
        if let Err(err) = ops.add(Events::new(&self.muxer.timer, EventSet::IN)) {
            error!("vsock {path}: registering the timer: {err:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.handle_activate_event(ops);
        } else if fd == self.muxer.listener.as_raw_fd() {
            self.muxer.accept_clients();
        } else if fd == self.muxer.timer.as_raw_fd() {
            self.muxer.timer_fired();
        } else if let Some(index) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            self.handle_queue_event(index);
        } else if self.muxer.owns(fd) {
            self.muxer.host_event(fd, events.event_set());
        } else {
            warn!(
                "vsock {}: event on unknown fd {fd}",
                self.uds_path().display()
            );
        }
        // Whatever happened may have produced packets either way.
        if self.is_activated() {
            if let Err(err) = self.process_queues() {
                error!("{err}");
            }
        }
        self.muxer.sync_events(ops);
    }
}
