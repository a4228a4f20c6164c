"""UniPC -- placeholder being replaced by a helper right now (not for commit)."""


def unipc(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=2):
    raise NotImplementedError
