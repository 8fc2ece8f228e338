"""The pieces of ``tlexp-advise`` (``tlexp.advise``): the evidence it measures, the pocket race that decides, the
backbones ranked, and the seeds' table as one labelled piece of evidence."""
