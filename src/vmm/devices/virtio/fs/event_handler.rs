//! The fs device as an event-manager subscriber (see the module docs of
//! [`super`] for the order of events).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Fs;
use crate::vmm::devices::virtio::VirtioDevice;

impl Fs {
    /// Starts watching the queue events (once: they stay registered across
    /// resets, and events while inactive are drained and ignored).
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_events_registered {
            return;
        }
        for evt in &self.queue_events {
            if let Err(err) = ops.add(Events::new(evt, EventSet::IN)) {
                error!("fs {}: registering the queue event: {err:?}", self.tag());
                return;
            }
        }
        self.queue_events_registered = true;
    }

    fn handle_activate_event(&mut self, ops: &mut EventOps) {
        if let Err(err) = self.activate_evt.read() {
            warn!("fs {}: reading the activate event: {err}", self.tag());
        }
        self.register_queue_events(ops);
        // Requests the guest queued before we watched the queue event are
        // still signalled by it (eventfds are level-triggered in epoll), so
        // nothing is lost; processing here just saves a wakeup.
        if self.is_activated() {
            for index in 0..self.queue_events.len() {
                self.process_and_log(index);
            }
        }
    }

    fn handle_queue_event(&mut self, index: usize) {
        if let Err(err) = self.queue_events[index].read() {
            // EAGAIN: spurious wakeup, nothing to drain.
            if err.kind() != std::io::ErrorKind::WouldBlock {
                warn!("fs {}: reading queue event: {err}", self.tag());
            }
        }
        if self.is_activated() {
            self.process_and_log(index);
        }
    }

    fn process_and_log(&mut self, index: usize) {
        if let Err(err) = self.process_queue(index) {
            error!("{err}");
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            error!("fs {}: registering the activate event: {err:?}", self.tag());
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.handle_activate_event(ops);
        } else if let Some(index) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            self.handle_queue_event(index);
        } else {
            warn!("fs {}: event on unknown fd {fd}", self.tag());
        }
    }
}
