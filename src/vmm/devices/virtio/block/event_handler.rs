//! The block device as an event-manager subscriber (see the module docs of
//! [`super`] for the order of events).

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Block;
use crate::vmm::devices::virtio::core::CoreEvent;

impl Block {
    fn process_and_log(&mut self) {
        if let Err(err) = self.process_queue() {
            error!("{err}");
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.core.register_activate_event(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.handle_event(fd, ops) {
            // Requests the guest queued before we watched the queue event
            // are still signalled by it (eventfds are level-triggered in
            // epoll), so nothing is lost; processing at activation just
            // saves a wakeup. Queue events while inactive (after a reset)
            // are drained and ignored.
            CoreEvent::Activate | CoreEvent::Queue(_) => {
                if self.core.is_activated() {
                    self.process_and_log();
                }
            }
            CoreEvent::Other => warn!("disk {}: event on unknown fd {fd}", self.id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vmm::devices::virtio::block::test_utils::{
        memory, TestInterrupt, TestQueue, DATA, F_WRITE,
    };
    use crate::vmm::devices::virtio::block::{QUEUE_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};
    use crate::vmm::devices::virtio::VirtioDevice;

    type Manager = EventManager<Arc<Mutex<Block>>>;

    fn flush_request(vq: &mut TestQueue) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
        vq.mem.write_slice(&header, GuestAddress(DATA)).unwrap();
        vq.mem
            .write_obj(0xeeu8, GuestAddress(DATA + 0x100))
            .unwrap();
        vq.add_chain(&[(DATA, 16, 0), (DATA + 0x100, 1, F_WRITE)]);
    }

    /// Runs the event loop until it has nothing to do.
    fn drain(manager: &mut Manager) -> usize {
        let mut total = 0;
        loop {
            let n = manager.run_with_timeout(0).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    #[test]
    fn activation_then_queue_events() {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let block = Arc::new(Mutex::new(Block::new(image.path(), false, "ev").unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(block.clone());
        // Before activation nothing is watched but the activate event.
        assert_eq!(drain(&mut manager), 0);
        assert!(!block.lock().unwrap().core.queue_events_registered());

        let mem = memory();
        let mut vq = TestQueue::new(&mem, QUEUE_SIZE);
        let interrupt = Arc::new(TestInterrupt::default());
        // A request queued (and notified) right at activation is not lost.
        flush_request(&mut vq);
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        block
            .lock()
            .unwrap()
            .activate(mem.clone(), interrupt.clone(), vec![vq.create_queue()])
            .unwrap();
        assert!(drain(&mut manager) >= 1);
        assert!(block.lock().unwrap().core.queue_events_registered());
        assert_eq!(vq.used_idx(), 1);
        let status: u8 = mem.read_obj(GuestAddress(DATA + 0x100)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(interrupt.count(), 1);

        // A guest notification processes the next request.
        flush_request(&mut vq);
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(drain(&mut manager), 1);
        assert_eq!(vq.used_idx(), 2);
        assert_eq!(interrupt.count(), 2);

        // After a reset, notifications are drained and ignored.
        assert!(block.lock().unwrap().reset());
        flush_request(&mut vq);
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(drain(&mut manager), 1);
        assert_eq!(vq.used_idx(), 2);

        // Re-activation doesn't register the queue event twice, and picks
        // up where the new queue starts.
        let mem2 = memory();
        let mut vq2 = TestQueue::new(&mem2, QUEUE_SIZE);
        flush_request(&mut vq2);
        block
            .lock()
            .unwrap()
            .activate(mem2, interrupt.clone(), vec![vq2.create_queue()])
            .unwrap();
        drain(&mut manager);
        assert_eq!(vq2.used_idx(), 1);
        assert_eq!(interrupt.count(), 3);
    }
}
