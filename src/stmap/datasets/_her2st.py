"""HER2ST reader (placeholder until the reader lands in this session)."""


def her2st(*args, **kwargs):  # noqa: D103
    raise NotImplementedError
