//! The fs device as an event-manager subscriber (see the module docs of
//! [`crate::vmm::devices::virtio::core`] for the order of events).

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Fs;
use crate::vmm::devices::virtio::core::CoreEvent;

impl Fs {
    fn process_and_log(&mut self, index: usize) {
        if let Err(err) = self.process_queue(index) {
            error!("{err}");
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.core.register_activate_event(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.handle_event(fd, ops) {
            // At activation: whatever the driver queued before the queue
            // events were watched (they stay signalled, so this only saves
            // a wakeup). Events while inactive are drained and ignored.
            CoreEvent::Activate => {
                if self.core.is_activated() {
                    for index in 0..super::NUM_QUEUES {
                        self.process_and_log(index);
                    }
                }
            }
            CoreEvent::Queue(index) => {
                if self.core.is_activated() {
                    self.process_and_log(index);
                }
            }
            CoreEvent::Other => warn!("fs {}: event on unknown fd {fd}", self.tag()),
        }
    }
}
