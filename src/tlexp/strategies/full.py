from tlexp.module import TransferModule


class Full(TransferModule):
    """Fine-tune everything from the first step; the backbone at a rate 10-100x below the head's."""
