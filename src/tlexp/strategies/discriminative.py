from tlexp.module import TransferModule


class Discriminative(TransferModule):
    """Everything trainable from the start, rates decayed by ``lr_decay`` per stage downwards
    (ULMFiT's discriminative fine-tuning: lower stages hold more general features)."""
