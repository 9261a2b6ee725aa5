//! The network device as an event-manager subscriber (see the module docs
//! of [`super`] for the order of events).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Net;
use super::tap::NetBackend;
use super::RX_QUEUE;
use crate::vmm::devices::virtio::core::CoreEvent;

impl<B: NetBackend> Net<B> {
    /// Starts watching the backend (once: it stays registered across
    /// resets, and events while inactive are ignored), once the core
    /// watches the queue events.
    fn register_backend(&mut self, ops: &mut EventOps) {
        if self.backend_registered || !self.core.queue_events_registered() {
            return;
        }
        // Edge-triggered: the device reads until the tap is empty or
        // keeps a frame pending for the rx queue notification.
        let events = Events::new(&self.backend, EventSet::IN | EventSet::EDGE_TRIGGERED);
        if let Err(err) = ops.add(events) {
            error!("net {}: registering the tap: {err:?}", self.name());
            return;
        }
        self.backend_registered = true;
    }

    fn rx_and_log(&mut self) {
        if let Err(err) = self.process_rx() {
            error!("{err}");
        }
    }

    fn tx_and_log(&mut self) {
        if let Err(err) = self.process_tx() {
            error!("{err}");
        }
    }
}

impl<B: NetBackend + 'static> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        self.core.register_activate_event(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let event = self.core.handle_event(fd, ops);
        // Queue events and tap edges while inactive (after a reset) are
        // drained and ignored.
        let activated = self.core.is_activated();
        match event {
            CoreEvent::Activate if activated => {
                self.register_backend(ops);
                // Frames the guest queued, and frames that reached the tap
                // while nobody watched it (no new edge would announce them).
                self.tx_and_log();
                self.rx_and_log();
            }
            // New rx buffers: deliver what is pending and on the tap.
            CoreEvent::Queue(RX_QUEUE) if activated => self.rx_and_log(),
            CoreEvent::Queue(_) if activated => self.tx_and_log(),
            CoreEvent::Activate | CoreEvent::Queue(_) => {}
            CoreEvent::Other if fd == self.backend.as_raw_fd() => {
                if activated {
                    self.rx_and_log();
                }
            }
            CoreEvent::Other => warn!("net {}: event on unknown fd {fd}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::{as_delivered, frame, Harness};
    use super::super::TX_QUEUE;
    use crate::vmm::devices::virtio::VirtioDevice;

    #[test]
    fn frames_on_the_tap_before_activation_are_delivered() {
        let mut h = Harness::inactive(false);
        // Before activation nothing is watched but the activate event.
        let f1 = frame(300, 1);
        let f2 = frame(400, 2);
        h.backend.push(f1.clone());
        h.backend.push(f2.clone());
        assert_eq!(h.drain(), 0);
        assert!(!h.net().backend_registered);
        assert_eq!(h.backend.rx_left(), 2);

        // The guest posts buffers before DRIVER_OK, as Linux does; the
        // frames' edges are long gone, activation drains the tap.
        h.add_rx_buffers(4, 2048);
        h.activate();
        assert!(h.drain() >= 1);
        assert!(h.net().backend_registered);
        assert!(h.net().core.queue_events_registered());
        assert_eq!(
            h.recv(),
            vec![(300, as_delivered(&f1)), (400, as_delivered(&f2))]
        );
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn tap_and_queue_events_move_frames() {
        let mut h = Harness::new(false);
        h.drain();
        // A frame with no buffer waits; one more edge changes nothing.
        let frames: Vec<Vec<u8>> = (0..4u8).map(|i| frame(100, i)).collect();
        h.backend.push(frames[0].clone());
        h.drain();
        h.backend.push(frames[1].clone());
        h.drain();
        assert!(h.net().rx_pending.is_some());
        assert_eq!(h.backend.rx_left(), 1);
        assert_eq!(h.interrupt.count(), 0);

        // Buffers and a notification: both arrive, in order.
        h.add_rx_buffers(3, 2048);
        h.notify_and_run(super::super::RX_QUEUE);
        let got: Vec<Vec<u8>> = h.recv().into_iter().map(|(_, b)| b).collect();
        assert_eq!(
            got,
            vec![as_delivered(&frames[0]), as_delivered(&frames[1])]
        );
        assert_eq!(h.interrupt.count(), 1);

        // With a buffer free, a new frame is delivered on its edge alone.
        h.backend.push(frames[2].clone());
        h.drain();
        let got: Vec<Vec<u8>> = h.recv().into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, vec![as_delivered(&frames[2])]);
        assert_eq!(h.interrupt.count(), 2);

        // tx: a notification sends the frame.
        h.send(&frames[3]);
        h.notify_and_run(TX_QUEUE);
        assert_eq!(h.backend.take_tx(), vec![frames[3].clone()]);
        assert_eq!(h.txq.used_idx(), 1);
        assert_eq!(h.interrupt.count(), 3);
    }

    #[test]
    fn events_after_reset_are_ignored_until_reactivation() {
        let mut h = Harness::new(false);
        h.drain();
        assert!(h.net().reset());

        // Notifications and tap edges while inactive do nothing.
        h.add_rx_buffers(2, 2048);
        let f = frame(150, 7);
        h.backend.push(f.clone());
        h.send(&frame(60, 8));
        h.notify(super::super::RX_QUEUE);
        h.notify(TX_QUEUE);
        h.drain();
        assert_eq!(h.backend.rx_left(), 1);
        assert!(h.backend.take_tx().is_empty());
        assert_eq!(h.interrupt.count(), 0);

        // Re-activation with fresh queues registers nothing twice and
        // drains the tap.
        h.fresh_queues();
        h.add_rx_buffers(2, 2048);
        h.activate();
        h.drain();
        assert!(h.net().is_activated());
        assert_eq!(h.recv(), vec![(150, as_delivered(&f))]);
        assert_eq!(h.interrupt.count(), 1);
        let g = frame(200, 9);
        h.backend.push(g.clone());
        h.drain();
        assert_eq!(h.recv(), vec![(200, as_delivered(&g))]);
    }
}
