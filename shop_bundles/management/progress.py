"""A tqdm progress bar fed by the services' ``progress(fraction, stage)`` callbacks."""
from contextlib import contextmanager


@contextmanager
def progress_bar(desc: str, *, verbosity: int, remaining: bool = False):
    """Yield a ``progress(fraction: float in [0, 1], stage: str)`` callback drawing a 0–100 % tqdm bar.

    The bar is hidden at ``verbosity`` 0 and always closed on exit.
    """
    from tqdm import tqdm

    timing = "[{elapsed}<{remaining}]" if remaining else "[{elapsed}]"
    bar = tqdm(total=100, unit="%", desc=desc, disable=verbosity == 0,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} " + timing)

    def progress(fraction: float, stage: str) -> None:
        bar.set_description_str(str(stage)[:40].ljust(40))
        bar.update(max(0.0, 100 * fraction - bar.n))

    try:
        yield progress
    finally:
        bar.close()
