//! The vsock device as an event-manager subscriber (see the module docs of
//! [`super`] for the order of events).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Vsock;
use super::EVENT_QUEUE;
use crate::vmm::devices::virtio::core::CoreEvent;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let path = self.uds_path().display().to_string();
        self.core.register_activate_event(ops);
        if let Err(err) = ops.add(Events::new(&self.muxer.listener, EventSet::IN)) {
            error!("vsock {path}: registering the listening socket: {err:?}");
        }
        if let Err(err) = ops.add(Events::new(&self.muxer.timer, EventSet::IN)) {
            error!("vsock {path}: registering the timer: {err:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.handle_event(fd, ops) {
            // The driver gave its event buffer back after a transport
            // reset: it has reset its old sockets, what waited may go.
            CoreEvent::Queue(EVENT_QUEUE) => self.awaiting_reset = false,
            // Activation registered the queue events; a reset (which also
            // writes the activate event) left the muxer work to sync. rx:
            // new buffers, tx: new packets; both queues are looked at after
            // every event anyway. The event queue is used only for a
            // restored VM's transport reset.
            CoreEvent::Activate | CoreEvent::Queue(_) => {}
            CoreEvent::Other if fd == self.muxer.listener.as_raw_fd() => {
                self.muxer.accept_clients();
            }
            CoreEvent::Other if fd == self.muxer.timer.as_raw_fd() => self.muxer.timer_fired(),
            CoreEvent::Other if self.muxer.owns(fd) => {
                self.muxer.host_event(fd, events.event_set());
            }
            CoreEvent::Other => warn!(
                "vsock {}: event on unknown fd {fd}",
                self.uds_path().display()
            ),
        }
        // Whatever happened may have produced packets either way.
        if self.core.is_activated() {
            if let Err(err) = self.process_queues() {
                error!("{err}");
            }
        }
        self.muxer.sync_events(ops);
    }
}
