from tlexp.module import TransferModule


class Scratch(TransferModule):
    """Same architecture, random initialisation, everything trainable: the baseline transfer must beat."""

    uses_pretrained_weights = False
