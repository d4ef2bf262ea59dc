//! The tx class: tx.select, commit, rollback. A transactional channel holds its publishes
//! and acknowledgements until commit, then carries them out in order.

use std::sync::Arc;

use pier_broker::Message;
use pier_wire::{Method, TxCommitOk, TxRollbackOk, TxSelectOk};

use super::basic::Requeue;
use super::{precondition, Channel, ChannelCx};
use crate::amqp::error::AmqpException;

/// What a transaction holds until tx.commit.
#[derive(Default)]
pub(crate) struct Tx {
    pub(super) publishes: Vec<(Arc<Message>, bool)>,
    pub(super) acks: Vec<TxAck>,
}

pub(super) enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: Requeue,
    },
}

impl Channel {
    pub(super) fn tx_select(&mut self, cx: &mut ChannelCx<'_>) -> Result<(), AmqpException> {
        if self.confirm {
            return Err(precondition("cannot switch from confirm to tx mode"));
        }
        if self.tx.is_none() {
            self.tx = Some(Tx::default());
        }
        self.reply(cx, Method::TxSelectOk(TxSelectOk {}));
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, cx: &mut ChannelCx<'_>) -> Result<(), AmqpException> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(precondition("channel is not transactional"));
        };
        let tx = std::mem::take(tx);
        for op in tx.acks {
            match op {
                TxAck::Ack { tag, multiple } => self.ack(cx, tag, multiple, true)?,
                TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                } => self.nack(cx, tag, multiple, requeue, true)?,
            }
        }
        for (message, mandatory) in tx.publishes {
            self.route_message(cx, message, mandatory)?;
        }
        self.reply(cx, Method::TxCommitOk(TxCommitOk {}));
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, cx: &mut ChannelCx<'_>) -> Result<(), AmqpException> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(precondition("channel is not transactional"));
        };
        *tx = Tx::default();
        self.reply(cx, Method::TxRollbackOk(TxRollbackOk {}));
        Ok(())
    }
}
