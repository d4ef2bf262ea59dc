//! The confirm class: confirm.select, and the batched basic.ack of what was published.

use pier_wire::{ConfirmSelect, ConfirmSelectOk, Method};

use super::{precondition, Channel, ChannelCx};
use crate::amqp::error::AmqpException;
use crate::amqp::outbound::Outbound;

impl Channel {
    pub(super) fn confirm_select(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: ConfirmSelect,
    ) -> Result<(), AmqpException> {
        if self.tx.is_some() {
            return Err(precondition("cannot switch from tx to confirm mode"));
        }
        self.confirm = true;
        if !m.nowait {
            self.reply(cx, Method::ConfirmSelectOk(ConfirmSelectOk {}));
        }
        Ok(())
    }

    /// Reports what this channel has routed since the last flush; the session answers with
    /// one basic.ack for all of it that does not wait for the disk. Called after each read
    /// batch.
    pub(crate) fn flush_confirms(&mut self, outbound: &Outbound) {
        if self.confirm && self.publish_seq > self.reported_seq && !self.closing {
            outbound.confirm_published(self.number, self.publish_seq);
            self.reported_seq = self.publish_seq;
        }
    }
}
